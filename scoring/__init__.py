"""stormguard.scoring — reserved for later issues (see DESIGN.md)."""
