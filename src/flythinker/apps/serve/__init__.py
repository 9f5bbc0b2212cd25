"""`flythinker serve`: the personalization server (issue in progress: the profile store first)."""
