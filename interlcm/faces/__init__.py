"""Whole-photo face handling: detect, align, paste back (the release's FaceRestoreHelper, as parts)."""
