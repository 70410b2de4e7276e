"""The worker: fetch, run and acknowledge jobs (asyncio only; sync handlers run in threads)."""
