"""The model store: manifest, the project's own INT8 demo models and their cards."""
