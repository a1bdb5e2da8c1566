"""moss_vla."""
