"""The dashboard's screens: each one redraws from the app's `FarmStore` (see `base.LiveScreen`)."""
