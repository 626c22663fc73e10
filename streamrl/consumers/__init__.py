"""Event processor: validation, user state, reward join, state stores."""
