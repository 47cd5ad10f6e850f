-- The idempotency key's uniqueness, enforced only where there is a key.
--
-- `unique (project, idempotency_key)` put an entry in its index for every
-- dispatch, though most have no key (NULLs never conflict): one more index
-- insertion on every create, and an index as large as the table's primary
-- key that only keyed creates use.
--
-- Invariant (unchanged): a project has at most one dispatch per idempotency
-- key. Creates name the index by `on conflict (project, idempotency_key)
-- where idempotency_key is not null`, and lookups by key
-- (`idempotency_key = $2`) imply the predicate, so both use it.
alter table dispatch drop constraint dispatch_idempotency_key;
create unique index dispatch_idempotency_key on dispatch (project, idempotency_key)
    where idempotency_key is not null;
