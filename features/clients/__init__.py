"""The client feature vector: its one definition (:mod:`.vector`), computed in batch per window
(:mod:`.windows`) and incrementally per connection (:mod:`.online`)."""
