"""The encrypted, access-controlled, multi-tenant registry of adapters."""
