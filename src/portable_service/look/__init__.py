"""Looking inside images: inspect, ls, cat, verify, diff, size (registered by :mod:`.verbs`)."""
