"""Data: datasets on disk -> unified clips -> windows and splits; several datasets as one (joint runs)."""
