"""stormguard.models — reserved for later issues (see DESIGN.md)."""
