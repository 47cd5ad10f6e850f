-- Room for a dispatch's report on its own page.
--
-- A state change is a HOT update (no new index entries) only if the new
-- version fits on the row's page. At fill factor 85 a page of dispatches
-- kept ~1.2 KB free, and a report that adds the call's result (and output
-- tail) seldom fit, so about one update per dispatch was not HOT and added
-- an entry to each of the table's indexes (pg_waldump over a 64-client run:
-- ~1.07 non-HOT updates a dispatch). Applies to pages written from now on.
--
-- Invariant: none beyond 0015's; this is storage only. Measured (64 clients,
-- three alternating runs each): WAL per dispatch 8.4 -> 7.0 KiB, Postgres CPU
-- per dispatch unchanged (1.02 -> 1.00 ms), the label listing at 1M rows p99
-- 3.0 -> 2.5 ms (within its spread).

alter table dispatch set (fillfactor = 60);
