"""Process management: the chat's daphne, its supervisor, and the development server."""
