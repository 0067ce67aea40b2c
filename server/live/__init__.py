"""Live learning off the accept path: the reputation rules over online features (:mod:`.rules`) and the
behaviour model scoring connected clients in micro-batches (:mod:`.model`)."""
