"""One module per CLI command; ``guardian.cli`` registers them. ``common`` holds the options
they share. Commands wire the subsystems together and print; they hold no policy.
"""
