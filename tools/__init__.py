"""Developer tools of the hafw formula (``make render``, ``make demo``, ...)."""
