"""The test kit shared by every test tier: builders, fake CA, scriptable fake xDS server, fake clock.
Imported only by tests and by explicit fake modes of the binaries, never by production paths."""
