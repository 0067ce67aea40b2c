"""stormguard.server — reserved for later issues (see DESIGN.md)."""
