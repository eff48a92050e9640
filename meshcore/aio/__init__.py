"""Every asyncio shell shared by the binaries: relay, HBONE client/server/pool, xDS and CA clients,
SecretManager, StateCell, drain, socket factories. Thin: decisions live in the sans-IO cores."""
