"""waypoint: the optional L7 proxy per service account (or namespace/service). Terminates HBONE, parses
HTTP, applies L7 authorization and routing, re-originates HBONE. Not built yet beyond this package."""
