"""Schema migrations, applied in order by `PRAGMA user_version`. Append-only: never edit a shipped one."""

from __future__ import annotations

_V1 = """
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
) STRICT;

CREATE TABLE owners (
  owner_id TEXT PRIMARY KEY,
  handle TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL,
  verified_at TEXT,
  verified_method TEXT,
  verified_by TEXT
) STRICT;

CREATE TABLE agents (
  agent_id TEXT PRIMARY KEY,
  handle TEXT NOT NULL UNIQUE,
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  tool TEXT NOT NULL,
  scopes TEXT NOT NULL,
  workdir TEXT,
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
  cred_epoch INTEGER NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL
) STRICT;

CREATE TABLE passports (
  jti TEXT PRIMARY KEY,
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  passport TEXT NOT NULL,
  issued_at TEXT NOT NULL,
  expires_at TEXT NOT NULL
) STRICT;

CREATE TABLE tokens (
  token_id TEXT PRIMARY KEY,
  token_hash BLOB NOT NULL UNIQUE,
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  jti TEXT NOT NULL REFERENCES passports(jti),
  run_id TEXT,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  revoked_at TEXT
) STRICT;
CREATE INDEX tokens_by_agent ON tokens(agent_id);

CREATE TABLE rooms (
  room_id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_by TEXT NOT NULL REFERENCES owners(owner_id),
  created_at TEXT NOT NULL
) STRICT;

CREATE TABLE room_owners (
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  joined_at TEXT NOT NULL,
  PRIMARY KEY (room_id, owner_id)
) STRICT;

CREATE TABLE room_agents (
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  joined_at TEXT NOT NULL,
  PRIMARY KEY (room_id, agent_id)
) STRICT;
CREATE INDEX room_agents_by_agent ON room_agents(agent_id);

-- Messages are found by (room_id, seq); message_id is 128 random bits with no index of its own, so a
-- post writes one table page and one index page. A room's latest seq is max(seq) on that index.
CREATE TABLE messages (
  message_id TEXT NOT NULL,
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  seq INTEGER NOT NULL,
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  text TEXT NOT NULL,
  mentions TEXT NOT NULL,
  reply_to INTEGER,
  created_at TEXT NOT NULL,
  UNIQUE (room_id, seq)
) STRICT;

CREATE TABLE files (
  file_id TEXT PRIMARY KEY,
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  name TEXT NOT NULL,
  media_type TEXT,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  content BLOB NOT NULL,
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  created_at TEXT NOT NULL
) STRICT;
CREATE INDEX files_by_room ON files(room_id, created_at);

CREATE TABLE invites (
  invite_id TEXT PRIMARY KEY,
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  code_hash BLOB NOT NULL UNIQUE,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  used_at TEXT,
  used_by TEXT
) STRICT;
CREATE INDEX invites_by_room ON invites(room_id);

CREATE TABLE audit (
  seq INTEGER PRIMARY KEY,
  ts TEXT NOT NULL,
  actor_kind TEXT NOT NULL,
  actor_id TEXT,
  owner_id TEXT,
  action TEXT NOT NULL,
  target TEXT,
  outcome TEXT NOT NULL,
  reason TEXT,
  cred_id TEXT,
  detail TEXT NOT NULL,
  prev_hash BLOB NOT NULL,
  row_hash BLOB NOT NULL
) STRICT;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""

# v2: the task board and cross-owner consent (DESIGN §4). Owners are stored beside agents on tasks and
# proposals so a row says on its own whose boundary it crossed.
_V2 = """
CREATE TABLE grants (
  grant_id TEXT PRIMARY KEY,
  from_owner TEXT NOT NULL REFERENCES owners(owner_id),
  to_owner TEXT NOT NULL REFERENCES owners(owner_id),
  created_at TEXT NOT NULL,
  revoked_at TEXT,
  CHECK (from_owner <> to_owner)
) STRICT;
CREATE UNIQUE INDEX grants_one_active ON grants(from_owner, to_owner) WHERE revoked_at IS NULL;

-- No row means the default, task_by_task (invariant 41).
CREATE TABLE consent_modes (
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  mode TEXT NOT NULL CHECK (mode IN ('task_by_task', 'approve_all', 'trust_collaborator', 'trust_room')),
  collaborator_id TEXT REFERENCES owners(owner_id),
  set_at TEXT NOT NULL,
  PRIMARY KEY (room_id, owner_id)
) STRICT;

CREATE TABLE tasks (
  task_id TEXT PRIMARY KEY,
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  number INTEGER NOT NULL,
  title TEXT NOT NULL,
  body TEXT NOT NULL,
  creator_id TEXT NOT NULL REFERENCES agents(agent_id),
  creator_owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  assignee_id TEXT REFERENCES agents(agent_id),
  assignee_owner_id TEXT REFERENCES owners(owner_id),
  status TEXT NOT NULL CHECK (status IN ('open', 'in_progress', 'done', 'cancelled')),
  consent_state TEXT NOT NULL CHECK (consent_state IN ('auto', 'pending', 'accepted', 'rejected')),
  proposal_id TEXT,
  note TEXT,
  note_by TEXT REFERENCES agents(agent_id),
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  UNIQUE (room_id, number)
) STRICT;

-- One row per cross-owner request: a task offered to another owner's agent, or a mention that would
-- wake one. A decision is bound to payload_sha256; a changed task supersedes its pending proposal.
CREATE TABLE proposals (
  proposal_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('task', 'wake')),
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  proposer_id TEXT NOT NULL REFERENCES agents(agent_id),
  proposer_owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  target_id TEXT NOT NULL REFERENCES agents(agent_id),
  target_owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  -- The grant it crossed: revoking it ends the proposal's chance of acceptance, and a later grant
  -- between the same owners does not bring it back.
  grant_id TEXT NOT NULL REFERENCES grants(grant_id),
  task_id TEXT REFERENCES tasks(task_id),
  message_id TEXT,
  payload TEXT NOT NULL,
  payload_sha256 TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected', 'superseded', 'withdrawn')),
  decided_by TEXT,
  decided_via TEXT,
  reason TEXT,
  created_at TEXT NOT NULL,
  decided_at TEXT
) STRICT;
CREATE INDEX proposals_by_target_owner ON proposals(target_owner_id, state);
CREATE INDEX proposals_by_task ON proposals(task_id);
"""

# v3: woken runs (DESIGN §5). A queued run is the durable outbox row written in the same transaction as
# the mention, task or decision that caused it; a supervisor claims it with a lease, so two server
# processes never spawn the same one and a crashed holder's runs are found again.
_V3 = """
CREATE TABLE runs (
  run_id TEXT PRIMARY KEY,
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  trigger TEXT NOT NULL CHECK (trigger IN ('mention', 'task', 'wake_proposal')),
  cause_id TEXT NOT NULL,
  caused_by TEXT NOT NULL REFERENCES agents(agent_id),
  constrained INTEGER NOT NULL,
  depth INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN
    ('queued', 'running', 'stopping', 'stopped', 'completed', 'failed', 'rate_limited', 'lost')),
  resume INTEGER NOT NULL DEFAULT 0,
  not_before TEXT,
  lease_holder TEXT,
  lease_until TEXT,
  pid INTEGER,
  session_id TEXT,
  outcome TEXT,
  stop_signal TEXT,
  stop_requested_at TEXT,
  created_at TEXT NOT NULL,
  started_at TEXT,
  ended_at TEXT
) STRICT;
CREATE INDEX runs_by_state ON runs(state, created_at);
CREATE INDEX runs_by_agent ON runs(agent_id, state);

-- While a provider rate-limits an owner's CLI, that owner's wakes for it wait (DESIGN §5).
CREATE TABLE backoffs (
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  tool TEXT NOT NULL,
  not_before TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  PRIMARY KEY (owner_id, tool)
) STRICT;
"""

# v4: variables an owner gives one agent's woken CLI (a provider key, say), sealed by the vault: the
# database never holds them in plaintext (DESIGN §8).
_V4 = """
CREATE TABLE agent_env (
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  name TEXT NOT NULL,
  sealed BLOB NOT NULL,
  set_at TEXT NOT NULL,
  PRIMARY KEY (agent_id, name)
) STRICT;
"""

# v5: a run's pid with its start time, so a supervisor that finds a dead holder's run kills that very
# process and never one that reused its pid.
_V5 = """
ALTER TABLE runs ADD COLUMN pid_start INTEGER;
"""

# Paging: list_files walks a room's files by rowid (its cursor); an index on room_id alone keeps them in
# rowid order, so a page is a range scan, not a sort of every file in the room.
_V_PAGING = """
CREATE INDEX files_by_room_position ON files(room_id);
"""


# The audit hardening (DESIGN §6, §9.3, invariants 68, 85).
# `INSERT OR REPLACE` deletes the row it replaces without firing the DELETE trigger (unless recursive_triggers
# is on), so v1's triggers let a row be rewritten in place: only the next row of the chain may be inserted.
# `auth_failures` counts failed authentications per window (a minute by default), source, credential-hash
# prefix and reason: the failed-authentication limit reads it, so a restart does not reset it, and each closed
# window is summarised into the audit log and then deleted (auth/failures.py).
_V_AUDIT = """
CREATE TRIGGER audit_only_next_row BEFORE INSERT ON audit
WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM audit)
  OR NEW.prev_hash IS NOT coalesce((SELECT row_hash FROM audit ORDER BY seq DESC LIMIT 1), zeroblob(32))
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: only the next row of the chain may be inserted'); END;

CREATE TABLE auth_failures (
  window_start TEXT NOT NULL,
  source TEXT NOT NULL,
  key_prefix BLOB NOT NULL,
  reason TEXT NOT NULL,
  failures INTEGER NOT NULL,
  PRIMARY KEY (window_start, source, key_prefix, reason)
) STRICT;
"""


# authz: an invite an agent creates waits for its owner (DESIGN §2, invariant 106). Until the owner confirms
# it there is no code at all, so nothing an agent saw can be accepted; the code's hash exists only once
# the owner has it. `owner_id` is whose invite it is, so only that owner confirms it. SQLite cannot drop
# NOT NULL from code_hash in place, hence the copy.
_V_AUTHZ = """
CREATE TABLE invites_v (
  invite_id TEXT PRIMARY KEY,
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  state TEXT NOT NULL CHECK (state IN ('pending_owner', 'active')),
  code_hash BLOB UNIQUE,
  owner_id TEXT REFERENCES owners(owner_id),
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  confirmed_at TEXT,
  expires_at TEXT NOT NULL,
  used_at TEXT,
  used_by TEXT,
  CHECK ((state = 'active') = (code_hash IS NOT NULL))
) STRICT;
INSERT INTO invites_v (invite_id, room_id, state, code_hash, created_by, created_at, expires_at, used_at, used_by)
  SELECT invite_id, room_id, 'active', code_hash, created_by, created_at, expires_at, used_at, used_by FROM invites;
DROP TABLE invites;
ALTER TABLE invites_v RENAME TO invites;
CREATE INDEX invites_by_room ON invites(room_id);
"""


# v_wake: a wake runs only what was accepted, and carries whose words caused it (DESIGN §4, §7).
# The runs table is rebuilt so its state CHECK is DESIGN §7's closed list: `rate_limited` becomes `failed`
# (outcome `rate_limit`; the follow-up is a queued run) and `invoke_revoked` becomes `withdrawn`.
# New on runs: `causers` (JSON list of owner ids whose words caused it, transitively), `proposal_id` (the
# accepted proposal it runs, if any), `payload_sha256` (the hash of the task payload it was agreed on) and
# `withdraw_reason` (set when a change during the run asks the supervisor to stop it as `withdrawn`).
# Tasks keep every owner who ever set their title or body; proposals name every owner whose words cross
# and every grant they crossed.
_V_WAKE = """
CREATE TABLE runs_v (
  run_id TEXT PRIMARY KEY,
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  room_id TEXT NOT NULL REFERENCES rooms(room_id),
  trigger TEXT NOT NULL CHECK (trigger IN ('mention', 'task', 'wake_proposal')),
  cause_id TEXT NOT NULL,
  caused_by TEXT NOT NULL REFERENCES agents(agent_id),
  causers TEXT NOT NULL DEFAULT '[]',
  proposal_id TEXT,
  payload_sha256 TEXT,
  constrained INTEGER NOT NULL,
  depth INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('queued', 'waiting_for_listener', 'running', 'stopping', 'completed',
    'failed', 'stopped', 'stop_pending', 'lost', 'withdrawn', 'expired')),
  resume INTEGER NOT NULL DEFAULT 0,
  not_before TEXT,
  lease_holder TEXT,
  lease_until TEXT,
  pid INTEGER,
  pid_start INTEGER,
  session_id TEXT,
  outcome TEXT,
  withdraw_reason TEXT,
  stop_signal TEXT,
  stop_requested_at TEXT,
  created_at TEXT NOT NULL,
  started_at TEXT,
  ended_at TEXT
) STRICT;
INSERT INTO runs_v (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, causers, constrained, depth,
  state, resume, not_before, lease_holder, lease_until, pid, pid_start, session_id, outcome, stop_signal,
  stop_requested_at, created_at, started_at, ended_at)
SELECT r.run_id, r.agent_id, r.owner_id, r.room_id, r.trigger, r.cause_id, r.caused_by,
  json_array(coalesce((SELECT a.owner_id FROM agents a WHERE a.agent_id = r.caused_by), r.owner_id)),
  r.constrained, r.depth,
  CASE WHEN r.state = 'rate_limited' THEN 'failed' WHEN r.outcome = 'invoke_revoked' THEN 'withdrawn' ELSE r.state END,
  r.resume, r.not_before, r.lease_holder, r.lease_until, r.pid, r.pid_start, r.session_id,
  CASE WHEN r.outcome = 'invoke_revoked' THEN 'withdrawn:invoke_revoked' ELSE r.outcome END,
  r.stop_signal, r.stop_requested_at, r.created_at, r.started_at, r.ended_at
FROM runs r;
DROP TABLE runs;
ALTER TABLE runs_v RENAME TO runs;
CREATE INDEX runs_by_state ON runs(state, created_at);
CREATE INDEX runs_by_agent ON runs(agent_id, state);
CREATE INDEX runs_by_cause ON runs(cause_id, state);

ALTER TABLE tasks ADD COLUMN causers TEXT NOT NULL DEFAULT '[]';
UPDATE tasks SET causers = json_array(creator_owner_id);
ALTER TABLE proposals ADD COLUMN causers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE proposals ADD COLUMN grant_ids TEXT NOT NULL DEFAULT '[]';
-- The run that proposed, if a woken run did: the wake an acceptance causes counts towards its depth.
ALTER TABLE proposals ADD COLUMN run_id TEXT;
UPDATE proposals SET causers = json_array(proposer_owner_id), grant_ids = json_array(grant_id);
"""

# Per-agent abuse limits (DESIGN §9.3, invariant 67): one token bucket per agent and kind of call, kept here
# so every server process on this database draws on the same one (ratelimit.py). `refused` counts the
# refusals of the current episode for its summary audit row.
_V_RATES = """
CREATE TABLE rate_buckets (
  agent_id TEXT NOT NULL,
  bucket TEXT NOT NULL CHECK (bucket IN ('posts', 'file_writes', 'task_writes', 'reads')),
  level REAL NOT NULL,
  updated_at REAL NOT NULL,
  refused INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (agent_id, bucket)
) STRICT, WITHOUT ROWID;
"""

# devices: an owner's own machines (DESIGN §9.1). `audit.via` says which path a human action came by
# (`cli`, `device`, `console`); rows from before it have none, and their hash is computed as it always was.
# An enrollment code is `ENROLLMENT_ID.SECRET`: the id finds the row, so failed attempts at one code can be
# counted on it (void after 5, from any source); only the secret's hash is kept. A device's credential is
# kept as a hash too; `last_used_at` makes a device that went unused for 90 days expire.
_V_DEVICES = """
ALTER TABLE audit ADD COLUMN via TEXT;

CREATE TABLE enrollments (
  enrollment_id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  secret_hash BLOB NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  failures INTEGER NOT NULL DEFAULT 0,
  used_at TEXT,
  device_id TEXT
) STRICT;

CREATE TABLE devices (
  device_id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  name TEXT NOT NULL,
  cred_hash BLOB NOT NULL UNIQUE,
  created_at TEXT NOT NULL,
  last_used_at TEXT NOT NULL,
  revoked_at TEXT
) STRICT;
CREATE INDEX devices_by_owner ON devices(owner_id);
"""

# v_runs_book: a lease names the host its holder runs on (DESIGN §5): recovery kills a left-behind process
# only when the lease's host is its own, since a pid means nothing on another machine. Run outcomes become
# DESIGN §7's closed list: older words are mapped to the listed code that says the most (README "Run
# outcomes"), and triggers refuse any other, so no write path can bring one back. Owners get `local`
# (DESIGN §5 "Where a wake runs": the embedded supervisor spawns only local owners' agents); every owner
# of an existing home is marked local, so a home that woke agents before goes on doing so.
_V_RUNS_BOOK = """
ALTER TABLE runs ADD COLUMN lease_host TEXT;
ALTER TABLE owners ADD COLUMN local INTEGER NOT NULL DEFAULT 0;
UPDATE owners SET local = 1;
UPDATE runs SET outcome = CASE
  WHEN outcome IN ('wall', 'idle') THEN 'time_limit'
  WHEN outcome = 'line_too_long' THEN 'output_cap'
  WHEN outcome = 'CONSTRAINED_RUNTIME_REQUIRED' THEN 'sandbox_required'
  WHEN outcome IN ('no_result:exit_126', 'no_result:exit_127') THEN 'cli_not_found'
  WHEN outcome IN ('error_max_turns', 'error_max_budget_usd') THEN 'usage_limit'
  WHEN outcome IN (%(listed)s) OR outcome GLOB 'withdrawn:[a-z]*' THEN outcome
  ELSE 'lost' END
WHERE outcome IS NOT NULL;
CREATE TRIGGER runs_outcome_listed_insert BEFORE INSERT ON runs
WHEN NEW.outcome IS NOT NULL AND NOT %(ok)s
BEGIN SELECT RAISE(ABORT, 'run outcome outside the closed list (DESIGN 7)'); END;
CREATE TRIGGER runs_outcome_listed_update BEFORE UPDATE OF outcome ON runs
WHEN NEW.outcome IS NOT NULL AND NOT %(ok)s
BEGIN SELECT RAISE(ABORT, 'run outcome outside the closed list (DESIGN 7)'); END;
"""
# DESIGN §7's outcomes as this migration shipped them (tests/test_run_outcomes.py checks them against
# run_states.Outcome); `withdrawn` is written only with its reason, a lower-case word.
_LISTED_OUTCOMES = (
    "'ok', 'cli_not_found', 'workdir_missing', 'sandbox_unavailable', 'sandbox_required', 'root_refused',"
    " 'env_unavailable', 'mcp_failed', 'auth', 'rate_limit', 'usage_limit', 'output_cap', 'time_limit',"
    " 'stopped', 'shutdown', 'lost', 'expired'"
)
_OUTCOME_OK = (
    f"(NEW.outcome IN ({_LISTED_OUTCOMES}) OR (NEW.outcome GLOB 'withdrawn:[a-z]*'"
    " AND NOT NEW.outcome GLOB 'withdrawn:*[^a-z_]*'))"
)
_V_RUNS_BOOK = _V_RUNS_BOOK % {"listed": _LISTED_OUTCOMES, "ok": _OUTCOME_OK}


def _rate_buckets_allowing(*buckets: str) -> str:
    """`rate_buckets` rebuilt with its rows to allow these buckets: SQLite cannot alter a CHECK."""
    listed = ", ".join(f"'{b}'" for b in buckets)
    return f"""
CREATE TABLE rate_buckets_new (
  agent_id TEXT NOT NULL,
  bucket TEXT NOT NULL CHECK (bucket IN ({listed})),
  level REAL NOT NULL,
  updated_at REAL NOT NULL,
  refused INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (agent_id, bucket)
) STRICT, WITHOUT ROWID;
INSERT INTO rate_buckets_new SELECT agent_id, bucket, level, updated_at, refused FROM rate_buckets;
DROP TABLE rate_buckets;
ALTER TABLE rate_buckets_new RENAME TO rate_buckets;
"""


_AGENT_BUCKETS = ("posts", "file_writes", "task_writes", "reads")
# A bucket per enrolled device for its owner actions (DESIGN §9.3 "and per device"): `agent_id` then holds
# the device's id.
_V_DEVICE_RATES = _rate_buckets_allowing(*_AGENT_BUCKETS, "owner_actions")

# v_lease_epoch: fencing (DESIGN §9.1). Each claim of a run raises its lease_epoch, and a supervisor's
# reports (spawned, session, ended) apply only while its holder id and epoch still hold the run: one whose
# lease ran out and whose run was recovered, re-queued and claimed again never writes over the new claim.
_V_LEASE_EPOCH = """
ALTER TABLE runs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
"""

# Listeners (DESIGN §9.1): each listener process a device runs, the agents it holds (one holder per agent at
# a time, under a fencing epoch), and the moment a run's spawn was reported, before its CLI was executed: a
# run with one is never queued again, only ended `lost`.
_V_LISTENERS = """
CREATE TABLE listeners (
  holder TEXT PRIMARY KEY,
  device_id TEXT NOT NULL REFERENCES devices(device_id),
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  host TEXT NOT NULL,
  max_running INTEGER NOT NULL,
  max_running_per_agent INTEGER NOT NULL,
  started_at TEXT NOT NULL,
  seen_at TEXT NOT NULL
) STRICT;
CREATE INDEX listeners_device ON listeners (device_id);

CREATE TABLE listener_holds (
  agent_id TEXT PRIMARY KEY REFERENCES agents(agent_id),
  holder TEXT NOT NULL REFERENCES listeners(holder),
  epoch INTEGER NOT NULL,
  until TEXT NOT NULL
) STRICT;
CREATE INDEX listener_holds_holder ON listener_holds (holder);

ALTER TABLE runs ADD COLUMN spawned_at TEXT;
UPDATE runs SET spawned_at = started_at WHERE pid IS NOT NULL;
"""

# DESIGN §5: every woken CLI runs in a sandbox unless its owner turned it off for that agent (`agent set
# HANDLE --sandbox off`, confirmed); on by default, so an agent added before the sandbox existed gets one too.
_V_SANDBOX = """
ALTER TABLE agents ADD COLUMN sandbox INTEGER NOT NULL DEFAULT 1 CHECK (sandbox IN (0, 1));
"""

# A second bucket per device, for its listeners' requests (DESIGN §9.3 "and per device"; ratelimit.py).
_V_LISTENER_RATES = _rate_buckets_allowing(*_AGENT_BUCKETS, "owner_actions", "listener_requests")

# Kill switches (DESIGN §6, invariants 48, 49, 51, 90). A deleted agent, a quarantined room and a removed owner
# stay as archived rows (their owners' export, the operators' `room export`) until the purge removes them;
# `deleted_at`, `quarantined_at` and `removed_at` say since when, and the purge keys on them. A membership ended
# by a kill switch moves to `ended_memberships`, so the archive still says who was in the room while every
# membership query stays as it was. `revocations` holds one row per revocation (a token, an agent's every
# credential, a room's run tokens, an owner), written in the same transaction as the revoke and its audit row.
# `retired_handles` keeps every handle a delete or removal retired: it outlives the purge, so a handle is never
# given to someone else (DESIGN §6). An invite withdrawn by a quarantine keeps its row with `withdrawn_at`.
_V_KILL_SWITCHES = """
ALTER TABLE agents ADD COLUMN deleted_at TEXT;
ALTER TABLE rooms ADD COLUMN quarantined_at TEXT;
ALTER TABLE owners ADD COLUMN removed_at TEXT;
ALTER TABLE invites ADD COLUMN withdrawn_at TEXT;

CREATE TABLE ended_memberships (
  room_id TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  joined_at TEXT NOT NULL,
  ended_at TEXT NOT NULL,
  reason TEXT NOT NULL CHECK (reason IN ('agent_deleted', 'room_quarantined', 'owner_removed')),
  PRIMARY KEY (room_id, agent_id, ended_at)
) STRICT;
CREATE INDEX ended_memberships_by_agent ON ended_memberships(agent_id);

CREATE TABLE revocations (
  revocation_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('token', 'agent', 'room', 'owner')),
  subject_id TEXT NOT NULL,
  cause TEXT NOT NULL CHECK (cause IN ('token_revoke', 'agent_delete', 'room_quarantine', 'owner_remove')),
  created_at TEXT NOT NULL
) STRICT;
CREATE INDEX revocations_by_subject ON revocations(subject_id);

CREATE TABLE retired_handles (
  kind TEXT NOT NULL CHECK (kind IN ('agent', 'owner')),
  handle TEXT NOT NULL,
  retired_at TEXT NOT NULL,
  PRIMARY KEY (kind, handle)
) STRICT;
"""

# The owner console (DESIGN §9.2). A login link is `LINK_ID.SECRET` like an enrollment code: the id finds the
# row so failed attempts count on it (void after 5), only the secret's hash is kept, and `used_at` makes it
# single use. A session is found by its cookie's hash; `revoked_at` ends it (logout, a revoked device, a
# restore revoking every console session: store/credentials.py's registry). `device_id` is the device that
# minted its link, if one did: revoking that device ends the session on its next request.
_V_CONSOLE = """
CREATE TABLE console_links (
  link_id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  secret_hash BLOB NOT NULL,
  device_id TEXT,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  failures INTEGER NOT NULL DEFAULT 0,
  used_at TEXT
) STRICT;

CREATE TABLE console_sessions (
  session_id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES owners(owner_id),
  cookie_hash BLOB NOT NULL UNIQUE,
  link_id TEXT NOT NULL,
  device_id TEXT,
  secure INTEGER NOT NULL CHECK (secure IN (0, 1)),
  created_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  revoked_at TEXT
) STRICT;
CREATE INDEX console_sessions_by_owner ON console_sessions(owner_id);
"""

# The Claude.ai connector (DESIGN §9.4, invariants 97, 105, 108): the hub as its own OAuth 2.1 authorization
# server. A client is a metadata-document URL (`cimd`) or a registered `oac_` id (`dcr`); `approved_at` and
# `last_used_at` drive the deletion of clients never approved (24 h) or unused (90 days). A pending
# authorization waits under a random id for the owner's console page. A grant is one approval: one agent, its
# passport, the scopes chosen and the audience; it is the family its code, refresh tokens and access tokens
# belong to, and revoking it revokes them all. Access tokens (`aro_`) are rows of `tokens` with a `grant_id`,
# so they are listed, revoked and killed with their agent like any bearer token. Refresh tokens (`arf_`) are
# hashed like every secret; the one just replaced keeps its successor pair sealed by the vault for the 30 s
# in which a second, concurrent refresh gets that same pair.
_V_OAUTH = """
CREATE TABLE oauth_clients (
  client_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('cimd', 'dcr')),
  client_name TEXT NOT NULL,
  redirect_uris TEXT NOT NULL,
  application_type TEXT NOT NULL CHECK (application_type IN ('web', 'native')),
  created_at TEXT NOT NULL,
  approved_at TEXT,
  last_used_at TEXT
) STRICT;

CREATE TABLE oauth_requests (
  request_id TEXT PRIMARY KEY,
  client_id TEXT NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
  redirect_uri TEXT NOT NULL,
  state TEXT,
  code_challenge TEXT NOT NULL,
  scopes TEXT NOT NULL,
  resource TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL
) STRICT;

CREATE TABLE oauth_grants (
  grant_id TEXT PRIMARY KEY,
  client_id TEXT NOT NULL,
  agent_id TEXT NOT NULL REFERENCES agents(agent_id),
  jti TEXT NOT NULL REFERENCES passports(jti),
  scopes TEXT NOT NULL,
  audience TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  revoked_at TEXT
) STRICT;
CREATE INDEX oauth_grants_by_agent ON oauth_grants(agent_id);

CREATE TABLE oauth_codes (
  code_hash BLOB PRIMARY KEY,
  grant_id TEXT NOT NULL REFERENCES oauth_grants(grant_id),
  client_id TEXT NOT NULL,
  redirect_uri TEXT NOT NULL,
  code_challenge TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  used_at TEXT
) STRICT;

CREATE TABLE oauth_refresh (
  refresh_id TEXT PRIMARY KEY,
  token_hash BLOB NOT NULL UNIQUE,
  grant_id TEXT NOT NULL REFERENCES oauth_grants(grant_id),
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  replaced_at TEXT,
  successor BLOB
) STRICT;
CREATE INDEX oauth_refresh_by_grant ON oauth_refresh(grant_id);

ALTER TABLE tokens ADD COLUMN grant_id TEXT REFERENCES oauth_grants(grant_id);
CREATE INDEX tokens_by_grant ON tokens(grant_id) WHERE grant_id IS NOT NULL;
"""

# Receipts that settle (DESIGN §5, invariant 98): what each mention did when posted, with the run it woke or
# joined and the proposal it waits on, so `read_messages` can show each mention's current outcome with one
# look at those runs (by primary key, or by `runs_by_cause` for a proposal's later run). Older messages have
# none and show their mentions as posted words only.
_V_RECEIPTS = """
ALTER TABLE messages ADD COLUMN mention_outcomes TEXT;
"""

# Receipts that settle (DESIGN §5): an accepted wake proposal whose wake could not be queued (the queue cap, or
# a target that can no longer be woken) says so, so the mention waiting on it settles instead of reading
# `pending_consent` for ever.
_V_ACCEPTED_WAKE = """
ALTER TABLE proposals ADD COLUMN wake_outcome TEXT;
ALTER TABLE proposals ADD COLUMN wake_code TEXT;
"""

# A CLI keeps its sessions on the machine that ran it (DESIGN §5, §9.1): a run's session names the host (a
# listener's names its device) where it lives, so a wake on another device or on the hub starts afresh rather
# than resume one that is not there. Older sessions have none: only the hub's own supervisor resumes them.
_V_SESSION_HOST = """
ALTER TABLE runs ADD COLUMN session_host TEXT;
"""

MIGRATIONS: tuple[str, ...] = (
    _V1, _V2, _V3, _V4, _V5, _V_PAGING, _V_AUDIT, _V_AUTHZ, _V_WAKE, _V_RATES, _V_DEVICES, _V_RUNS_BOOK,
    _V_DEVICE_RATES, _V_LEASE_EPOCH, _V_LISTENERS, _V_SANDBOX, _V_LISTENER_RATES, _V_KILL_SWITCHES,
    _V_CONSOLE, _V_RECEIPTS, _V_OAUTH, _V_ACCEPTED_WAKE, _V_SESSION_HOST,
)  # fmt: skip
