"""eai: Emotion-Action Interpreter."""
