-- Accounts and access: users, organisations and robots; organisations'
-- teams; repository visibility and grants; personal access tokens; the keys
-- that sign bearer tokens; failed-login counters; the audit log; and the
-- account that owns each upload session. crates/meta/migrations/sqlite has
-- the same schema for SQLite.

-- Users, organisations and robots share one name space: a user's or an
-- organisation's name is the namespace of its repositories; a robot is
-- NAMESPACE+NAME.
CREATE TABLE accounts (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'organization', 'robot')),
    -- Users: an argon2id PHC string.
    password_hash TEXT,
    -- Robots: the SHA-256 (hex) of the robot's token.
    token_hash TEXT,
    -- 1 for registry administrators.
    admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- An organisation's teams; the role applies to all its repositories.
CREATE TABLE teams (
    organization TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('member', 'creator', 'admin')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (organization, name)
);

-- Team members: users or robots.
CREATE TABLE team_members (
    organization TEXT NOT NULL,
    team TEXT NOT NULL,
    member TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    PRIMARY KEY (organization, team, member),
    FOREIGN KEY (organization, team) REFERENCES teams (organization, name) ON DELETE CASCADE
);
CREATE INDEX team_members_by_member ON team_members (member);

-- Visibility of repositories created while authorization was on. A
-- repository without a row here is private.
CREATE TABLE repository_settings (
    repository TEXT COLLATE "C" PRIMARY KEY,
    visibility TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
    created_at BIGINT NOT NULL
);

-- Grants on single repositories. The grantee is a user, a robot (NS+NAME)
-- or a team (ORG/TEAM).
CREATE TABLE permissions (
    repository TEXT COLLATE "C" NOT NULL,
    grantee TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, grantee)
);
CREATE INDEX permissions_by_grantee ON permissions (grantee);

-- Personal access tokens, stored as the SHA-256 (hex) of the token.
CREATE TABLE access_tokens (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX access_tokens_by_account ON access_tokens (account);

-- Keys that sign bearer tokens, shared by every replica. The newest key
-- without retired_at signs; retired keys still verify the tokens they signed
-- until those expire.
CREATE TABLE signing_keys (
    id TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    private_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

-- Failed logins per account ('account:NAME') and per source address
-- ('address:IP'), for throttling, shared by every replica.
CREATE TABLE login_failures (
    key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    first_failure_at BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL
);

-- Logins, permission changes, pushes, deletes and tag moves.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    address TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);

-- The account that started an upload session; NULL while authorization is off.
ALTER TABLE uploads ADD COLUMN owner TEXT;
