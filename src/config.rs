//! Node configuration: the one struct tree every other module reads its settings from.
//!
//! This module owns the schema, its built-in defaults, the layering (defaults, then a
//! TOML file, then `BATON_*` environment variables, then [`Overrides`] from the command
//! line) and the semantic checks of [`Config::validate`]. Every problem is reported at
//! once, each naming its key path, so an operator fixes a config in one edit instead of
//! one restart per mistake. That is why the file is read into a [`toml::Table`] and each
//! key is taken out by hand: serde's derived `Deserialize` stops at the first error.
//!
//! It must not read the process environment itself (callers pass the pairs in, so tests
//! stay hermetic), open sockets, or touch the data directory: checking the `cluster_id`
//! stored there belongs to storage.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Prefix of the environment variables that set configuration keys.
const ENV_PREFIX: &str = "BATON_";

/// `BATON_*` variables that belong to someone else and are not configuration keys.
/// `BATON_LOG` is the log filter, read by the tracing set-up; `BATON_ADDR` is the CLI's default node list.
const RESERVED_ENV: &[&str] = &["BATON_LOG", "BATON_ADDR"];

/// The tables whose keys can be set from the environment one by one.
const ENV_TABLES: &[&str] = &["raft", "snapshot", "api"];

/// What an environment variable's text becomes, by the type of the key it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Text,
}

/// Every key an environment variable may set. `members` is deliberately absent: a list
/// of tables has no sensible single-variable form. The test
/// `env_keys_match_the_serialised_schema` keeps this list in step with the structs.
const ENV_KEYS: &[(&str, Kind)] = &[
    ("cluster_id", Kind::Text),
    ("node_id", Kind::Integer),
    ("data_dir", Kind::Text),
    ("grpc_listen", Kind::Text),
    ("http_listen", Kind::Text),
    ("raft.heartbeat_interval_ms", Kind::Integer),
    ("raft.election_timeout_min_ms", Kind::Integer),
    ("raft.election_timeout_max_ms", Kind::Integer),
    ("raft.install_snapshot_timeout_ms", Kind::Integer),
    ("raft.max_payload_entries", Kind::Integer),
    ("snapshot.logs_since_last", Kind::Integer),
    ("snapshot.max_logs_kept", Kind::Integer),
    ("snapshot.chunk_size_bytes", Kind::Integer),
    ("api.forward_timeout_ms", Kind::Integer),
    ("api.drain_timeout_ms", Kind::Integer),
    ("api.max_in_flight_proposals", Kind::Integer),
    ("api.max_payload_bytes", Kind::Integer),
];

/// Smallest allowed [`SnapshotConfig::chunk_size_bytes`]: smaller chunks would spend
/// more on per-message overhead than on snapshot data.
const MIN_CHUNK_SIZE_BYTES: u64 = 1024;

/// The whole configuration of one Baton node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Names the cluster. Storage records it in the data directory and refuses to open a
    /// directory written by another cluster. Only ASCII letters, digits, `.`, `_`, `-`.
    pub cluster_id: String,
    /// This node's Raft id: at least 1 and the id of one entry of [`Config::members`].
    pub node_id: u64,
    /// Where this node keeps its RocksDB data; a relative path is relative to the
    /// process's working directory.
    pub data_dir: PathBuf,
    /// Address the gRPC server binds, `host:port`. Defaults to this node's
    /// [`Member::grpc_addr`]; set it (e.g. `0.0.0.0:7001`) to bind other interfaces
    /// than the one advertised to peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,
    /// Address the HTTP server binds, `host:port`. Defaults to this node's
    /// [`Member::http_addr`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// The full initial cluster membership, this node included (`[[members]]` tables).
    pub members: Vec<Member>,
    /// Raft timing and batching (`[raft]`).
    pub raft: RaftConfig,
    /// Log compaction and snapshot transfer (`[snapshot]`).
    pub snapshot: SnapshotConfig,
    /// Client-facing API behaviour (`[api]`).
    pub api: ApiConfig,
}

/// One node of the cluster, as every other node reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The member's Raft node id, at least 1 and unique in the cluster.
    pub id: u64,
    /// Advertised `host:port` of the member's gRPC server (Raft traffic and the client API).
    pub grpc_addr: String,
    /// Advertised `host:port` of the member's HTTP server.
    pub http_addr: String,
}

/// Raft timing and batching (`[raft]`). Timeouts are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats; must be below `election_timeout_min_ms`.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout; above `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// How long one snapshot-chunk transfer may take before it is retried.
    pub install_snapshot_timeout_ms: u64,
    /// Most log entries sent in one append-entries request.
    pub max_payload_entries: u64,
}

impl Default for RaftConfig {
    /// 50 ms heartbeats, a 100–200 ms election timeout, 2 s per snapshot chunk, 32
    /// entries per append (fewer than openraft's 300: a new leader re-checks each follower's log one such range
    /// at a time, see docs/adr/0005-election-timing.md). openraft 0.9 adds a leader lease of `election_timeout_max_ms`
    /// before a follower may stand, so a follower elects after 300–400 ms without a
    /// heartbeat (docs/adr/0005-election-timing.md).
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            install_snapshot_timeout_ms: 2000,
            max_payload_entries: 32,
        }
    }
}

/// Log compaction and snapshot transfer (`[snapshot]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotConfig {
    /// Build a snapshot after this many log entries since the last one.
    pub logs_since_last: u64,
    /// Log entries kept behind the snapshot, so a slightly lagging follower can catch
    /// up from the log instead of a full snapshot.
    pub max_logs_kept: u64,
    /// Size of one snapshot transfer chunk, in bytes (at least 1024).
    pub chunk_size_bytes: u64,
}

impl Default for SnapshotConfig {
    /// A snapshot every 5000 entries, 1000 entries kept behind it, 1 MiB chunks.
    fn default() -> Self {
        SnapshotConfig { logs_since_last: 5000, max_logs_kept: 1000, chunk_size_bytes: 1024 * 1024 }
    }
}

/// Client-facing API behaviour (`[api]`). Timeouts are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiConfig {
    /// How long a follower waits for, and retries reaching, a leader to forward a write.
    pub forward_timeout_ms: u64,
    /// Graceful-shutdown budget: how long in-flight requests may take to finish.
    pub drain_timeout_ms: u64,
    /// Writes a node may have waiting for Raft at once; beyond it calls get RESOURCE_EXHAUSTED (HTTP 429).
    pub max_in_flight_proposals: u64,
    /// Largest JSON document (input, output, definition) a call may carry, bytes.
    pub max_payload_bytes: u64,
}

impl Default for ApiConfig {
    /// 5 s to forward a write, 5 s to drain on shutdown, 10,000 writes in flight, 1 MiB documents.
    fn default() -> Self {
        ApiConfig {
            forward_timeout_ms: 5000,
            drain_timeout_ms: 5000,
            max_in_flight_proposals: 10_000,
            max_payload_bytes: 1024 * 1024,
        }
    }
}

/// The last configuration layer: values given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces `data_dir` from the file and the environment.
    pub data_dir: Option<PathBuf>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// One or more problems: unknown keys, wrong types, invalid values. All of them,
    /// not just the first, each starting with the key path (or variable) at fault.
    #[error("{}", list_problems(problems))]
    Invalid {
        /// One line per problem, e.g. `raft.hearbeat_ms: unknown key`.
        problems: Vec<String>,
    },
}

/// Renders [`ConfigError::Invalid`]: a count, then one indented problem per line.
fn list_problems(problems: &[String]) -> String {
    let noun = if problems.len() == 1 { "problem" } else { "problems" };
    let mut out = format!("invalid configuration ({} {noun}):", problems.len());
    for problem in problems {
        // A TOML syntax error spans several lines; keep its continuation lines inside
        // the bullet.
        out.push_str("\n  - ");
        out.push_str(&problem.replace('\n', "\n    "));
    }
    out
}

impl Config {
    /// Layers: built-in defaults, then the TOML file (if given), then environment
    /// variables `BATON_*`, then `overrides`.
    ///
    /// `env` is usually `std::env::vars()`. A variable `BATON_<PATH>` sets the key whose
    /// path, upper-cased with `.` written as `__`, is `PATH` (`BATON_RAFT__HEARTBEAT_INTERVAL_MS`
    /// sets `raft.heartbeat_interval_ms`). For an integer key the text is parsed as a
    /// TOML value (`40` is an integer), falling back to a plain string; a string key
    /// takes the text verbatim unless it is a quoted TOML string. `members` cannot be
    /// set this way, `BATON_LOG` is left to the log filter, and any other unknown
    /// `BATON_*` variable is a problem. The result is validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                parse_table(&text, &path.display().to_string())?
            }
            None => Table::new(),
        };
        assemble(table, env, overrides)
    }

    /// Parse from a TOML string (same rules; used by tests), with no environment and no
    /// overrides. The result is validated.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let table = parse_table(text, "TOML text")?;
        assemble(table, std::iter::empty(), &Overrides::default())
    }

    /// This node's own member entry (validate() guarantees it exists).
    ///
    /// # Panics
    ///
    /// If `node_id` names no member, which only a config that fails
    /// [`Config::validate`] can do.
    pub fn me(&self) -> &Member {
        self.find_me().expect("validate() guarantees node_id is the id of one of members")
    }

    /// The address the gRPC server binds: `grpc_listen`, or else this node's advertised
    /// [`Member::grpc_addr`].
    pub fn grpc_listen_addr(&self) -> &str {
        match &self.grpc_listen {
            Some(addr) => addr,
            None => &self.me().grpc_addr,
        }
    }

    /// The address the HTTP server binds: `http_listen`, or else this node's advertised
    /// [`Member::http_addr`].
    pub fn http_listen_addr(&self) -> &str {
        match &self.http_listen {
            Some(addr) => addr,
            None => &self.me().http_addr,
        }
    }

    /// Every semantic problem at once (heartbeat below election timeout, distinct
    /// addresses, `node_id` among `members`, ...), as [`ConfigError::Invalid`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.check(&BTreeSet::new());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems: problems.iter().map(Problem::to_string).collect() })
        }
    }

    /// Serialise back to TOML (tests and `baton up` write generated configs with it);
    /// [`Config::from_toml_str`] reads the result back to an equal `Config`.
    ///
    /// # Panics
    ///
    /// If a value has no TOML form: an integer above `i64::MAX` or a `data_dir` that is
    /// not UTF-8. [`Config::validate`] rejects both, so a loaded config always serialises.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect(
            "validate() rules out the only values TOML cannot hold: \
             integers above i64::MAX and non-UTF-8 paths",
        )
    }

    fn find_me(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.id == self.node_id)
    }

    /// The semantic rules. A rule is skipped when a key it reads is in `unusable` (its
    /// value was missing or of the wrong type and has already been reported), so one
    /// mistake is not reported twice.
    fn check(&self, unusable: &BTreeSet<String>) -> Vec<Problem> {
        let mut c = Checks { unusable, problems: Vec::new() };

        if c.usable(&["cluster_id"]) {
            if self.cluster_id.is_empty() {
                c.fail("cluster_id", "must not be empty");
            } else if !self.cluster_id.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')) {
                c.fail(
                    "cluster_id",
                    format!("must contain only ASCII letters, digits, '.', '_' and '-' (got {:?})", self.cluster_id),
                );
            }
        }
        if c.usable(&["node_id"]) && self.node_id == 0 {
            c.fail("node_id", "must be at least 1 (got 0)");
        }
        if c.usable(&["data_dir"]) {
            if self.data_dir.as_os_str().is_empty() {
                c.fail("data_dir", "must not be empty");
            } else if self.data_dir.to_str().is_none() {
                c.fail("data_dir", format!("must be valid UTF-8 (got {:?})", self.data_dir.to_string_lossy()));
            }
        }

        self.check_members(&mut c);

        for (key, addr) in [("grpc_listen", &self.grpc_listen), ("http_listen", &self.http_listen)] {
            if let (Some(addr), true) = (addr, c.usable(&[key])) {
                if let Err(why) = check_host_port(addr) {
                    c.fail(key, format!("not a valid host:port address: {why} (got {addr:?})"));
                }
            }
        }
        // With neither set, the member rule (grpc_addr != http_addr) already covers this.
        if (self.grpc_listen.is_some() || self.http_listen.is_some())
            && c.usable(&["grpc_listen", "http_listen", "node_id", "members"])
        {
            if let Some(me) = self.find_me() {
                let grpc = self.grpc_listen.as_deref().unwrap_or(&me.grpc_addr);
                let http = self.http_listen.as_deref().unwrap_or(&me.http_addr);
                if grpc == http {
                    let key = if self.http_listen.is_some() { "http_listen" } else { "grpc_listen" };
                    c.fail(key, format!("the gRPC and HTTP servers would both bind {grpc:?}"));
                }
            }
        }

        let raft = &self.raft;
        let heartbeat = "raft.heartbeat_interval_ms";
        let election_min = "raft.election_timeout_min_ms";
        let election_max = "raft.election_timeout_max_ms";
        if c.usable(&[heartbeat]) && raft.heartbeat_interval_ms == 0 {
            c.fail(heartbeat, "must be at least 1 (got 0)");
        } else if c.usable(&[heartbeat, election_min]) && raft.heartbeat_interval_ms >= raft.election_timeout_min_ms {
            c.fail(
                heartbeat,
                format!(
                    "must be below {election_min} (got {} >= {})",
                    raft.heartbeat_interval_ms, raft.election_timeout_min_ms
                ),
            );
        }
        if c.usable(&[election_min, election_max]) && raft.election_timeout_min_ms >= raft.election_timeout_max_ms {
            c.fail(
                election_min,
                format!(
                    "must be below {election_max} (got {} >= {})",
                    raft.election_timeout_min_ms, raft.election_timeout_max_ms
                ),
            );
        }
        for (key, value, min) in [
            ("raft.install_snapshot_timeout_ms", raft.install_snapshot_timeout_ms, 1),
            ("raft.max_payload_entries", raft.max_payload_entries, 1),
            ("snapshot.logs_since_last", self.snapshot.logs_since_last, 1),
            ("snapshot.chunk_size_bytes", self.snapshot.chunk_size_bytes, MIN_CHUNK_SIZE_BYTES),
            ("api.forward_timeout_ms", self.api.forward_timeout_ms, 1),
            ("api.max_in_flight_proposals", self.api.max_in_flight_proposals, 1),
            ("api.max_payload_bytes", self.api.max_payload_bytes, 1024),
        ] {
            if c.usable(&[key]) && value < min {
                c.fail(key, format!("must be at least {min} (got {value})"));
            }
        }

        // Only reachable for a config built in code: TOML integers are i64, and
        // to_toml_string relies on this rule.
        for (key, value) in self.integers() {
            if i64::try_from(value).is_err() {
                c.fail(&key, format!("{value} is too large (TOML integers stop at {})", i64::MAX));
            }
        }

        c.problems
    }

    fn check_members(&self, c: &mut Checks<'_>) {
        if !c.usable(&["members"]) {
            return;
        }
        if self.members.is_empty() {
            c.fail("members", "must list the whole initial cluster, this node included (got none)");
            return;
        }
        let mut first_with_id: BTreeMap<u64, usize> = BTreeMap::new();
        let mut first_with_addr: BTreeMap<&str, String> = BTreeMap::new();
        for (i, member) in self.members.iter().enumerate() {
            let id_key = format!("members[{i}].id");
            if c.usable(&[&id_key]) {
                if member.id == 0 {
                    c.fail(&id_key, "must be at least 1 (got 0)");
                } else if let Some(first) = first_with_id.get(&member.id) {
                    c.fail(&id_key, format!("id {} is already used by members[{first}]", member.id));
                } else {
                    first_with_id.insert(member.id, i);
                }
            }
            for (field, addr) in [("grpc_addr", &member.grpc_addr), ("http_addr", &member.http_addr)] {
                let key = format!("members[{i}].{field}");
                if !c.usable(&[&key]) {
                    continue;
                }
                if let Err(why) = check_host_port(addr) {
                    c.fail(&key, format!("not a valid host:port address: {why} (got {addr:?})"));
                } else if let Some(first) = first_with_addr.get(addr.as_str()) {
                    if *first == format!("members[{i}].grpc_addr") {
                        c.fail(&key, format!("must differ from {first} (both {addr:?})"));
                    } else {
                        c.fail(&key, format!("{addr:?} is already used by {first}"));
                    }
                } else {
                    first_with_addr.insert(addr, key);
                }
            }
        }
        let id_keys: Vec<String> = (0..self.members.len()).map(|i| format!("members[{i}].id")).collect();
        let mut needed: Vec<&str> = id_keys.iter().map(String::as_str).collect();
        needed.push("node_id");
        if c.usable(&needed) && self.node_id != 0 && self.find_me().is_none() {
            let ids: Vec<String> = self.members.iter().map(|m| m.id.to_string()).collect();
            c.fail(
                "node_id",
                format!("{} is not the id of any entry in members (ids: {})", self.node_id, ids.join(", ")),
            );
        }
    }

    /// Every integer in the config with its key path.
    fn integers(&self) -> Vec<(String, u64)> {
        let (r, s, a) = (&self.raft, &self.snapshot, &self.api);
        let mut all: Vec<(String, u64)> = [
            ("node_id", self.node_id),
            ("raft.heartbeat_interval_ms", r.heartbeat_interval_ms),
            ("raft.election_timeout_min_ms", r.election_timeout_min_ms),
            ("raft.election_timeout_max_ms", r.election_timeout_max_ms),
            ("raft.install_snapshot_timeout_ms", r.install_snapshot_timeout_ms),
            ("raft.max_payload_entries", r.max_payload_entries),
            ("snapshot.logs_since_last", s.logs_since_last),
            ("snapshot.max_logs_kept", s.max_logs_kept),
            ("snapshot.chunk_size_bytes", s.chunk_size_bytes),
            ("api.forward_timeout_ms", a.forward_timeout_ms),
            ("api.drain_timeout_ms", a.drain_timeout_ms),
            ("api.max_in_flight_proposals", a.max_in_flight_proposals),
            ("api.max_payload_bytes", a.max_payload_bytes),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        for (i, member) in self.members.iter().enumerate() {
            all.push((format!("members[{i}].id"), member.id));
        }
        all
    }
}

/// One thing wrong with a configuration, attributed to a key path or a variable name.
#[derive(Debug, Clone)]
struct Problem {
    path: String,
    message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects semantic problems, skipping rules that read an unusable key.
struct Checks<'a> {
    unusable: &'a BTreeSet<String>,
    problems: Vec<Problem>,
}

impl Checks<'_> {
    /// True if none of `keys` is, or lies inside, a key already reported as unusable.
    fn usable(&self, keys: &[&str]) -> bool {
        keys.iter().all(|key| !self.unusable.iter().any(|bad| covers(bad, key)))
    }

    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_owned(), message: message.into() });
    }
}

/// Whether `outer` is `key` or one of its ancestors (`members` covers `members[0].id`,
/// `members[1]` does not cover `members[10].id`).
fn covers(outer: &str, key: &str) -> bool {
    key.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Checks `host:port`: a hostname, IPv4 address or bracketed IPv6 address, and a
/// non-zero port. Hostnames are allowed, so this does not resolve or parse a `SocketAddr`.
fn check_host_port(addr: &str) -> Result<(), &'static str> {
    let (host, port) = addr.rsplit_once(':').ok_or("missing \":port\"")?;
    if host.is_empty() {
        return Err("missing host");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("unclosed '[' in host")?;
        inner.parse::<Ipv6Addr>().map_err(|_| "the bracketed host is not an IPv6 address")?;
    } else if host.contains(':') {
        return Err("an IPv6 host must be in brackets, as in [::1]:7001");
    } else if !host.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_')) {
        return Err("the host may contain only ASCII letters, digits, '.', '-' and '_'");
    }
    match port.parse::<u16>() {
        Ok(0) => Err("the port must not be 0"),
        Ok(_) => Ok(()),
        Err(_) => Err("the port must be a number from 1 to 65535"),
    }
}

/// Parses TOML text into a table; a syntax error is the one problem reported.
fn parse_table(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Invalid {
        problems: vec![format!("{origin}: not valid TOML: {}", e.to_string().trim_end())],
    })
}

/// Applies the environment and overrides on top of the file's table, reads the result
/// and validates it, returning every problem found on the way.
fn assemble(
    mut table: Table,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    // Key path -> the layer that set it, so a bad value points at the place to fix.
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    apply_env(&mut table, env, &mut problems, &mut origins);
    if overrides.data_dir.is_some() {
        origins.insert("data_dir".to_owned(), "overrides".to_owned());
    }

    let mut reader = Reader::default();
    let config = reader.config(table, overrides);
    problems.extend(reader.problems.into_iter().chain(config.check(&reader.unusable)).map(|mut problem| {
        if let Some(origin) = origins.get(&problem.path) {
            problem.message.push_str(&format!(" (from {origin})"));
        }
        problem
    }));

    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid { problems: problems.iter().map(Problem::to_string).collect() })
    }
}

/// Writes each `BATON_*` variable into `table` at its key path, recording where each
/// key came from; unknown or forbidden variables become problems.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<Problem>,
    origins: &mut BTreeMap<String, String>,
) {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if RESERVED_ENV.contains(&name.as_str()) {
            continue;
        }
        let path = rest.to_ascii_lowercase().replace("__", ".");
        let mut problem = |message: String| problems.push(Problem { path: name.clone(), message });
        if path == "members" || path.starts_with("members.") {
            problem(
                "members cannot be set from the environment; list them as [[members]] in the config file".to_owned(),
            );
            continue;
        }
        if ENV_TABLES.contains(&path.as_str()) {
            problem(format!(
                "{path} is a table; set its keys one by one, as in {ENV_PREFIX}{}__<KEY>",
                path.to_ascii_uppercase()
            ));
            continue;
        }
        let Some(&(_, kind)) = ENV_KEYS.iter().find(|(key, _)| *key == path) else {
            problem(format!("unknown key {path} (from environment)"));
            continue;
        };
        let segments: Vec<&str> = path.split('.').collect();
        // If the file gave a non-table where a table belongs, this is not inserted; the
        // reader reports the file's mistake.
        if insert_at(table, &segments, env_value(&raw, kind)) {
            origins.insert(path, name);
        }
    }
}

/// The value an environment variable's text stands for, given the key's type.
fn env_value(raw: &str, kind: Kind) -> Value {
    let parsed = Value::deserialize(toml::de::ValueDeserializer::new(raw.trim()));
    match (kind, parsed) {
        (Kind::Integer, Ok(value)) => value,
        (Kind::Text, Ok(Value::String(text))) => Value::String(text),
        _ => Value::String(raw.to_owned()),
    }
}

/// Inserts `value` at the dotted path `segments`, creating tables on the way. Returns
/// false if a non-table value is in the way.
fn insert_at(table: &mut Table, segments: &[&str], value: Value) -> bool {
    match segments {
        [] => false,
        [leaf] => {
            table.insert((*leaf).to_owned(), value);
            true
        }
        [head, rest @ ..] => match table.entry(*head).or_insert_with(|| Value::Table(Table::new())) {
            Value::Table(inner) => insert_at(inner, rest, value),
            _ => false,
        },
    }
}

/// A one-phrase description of a TOML value for type errors, e.g. `string "x"`.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Takes known keys out of tables one by one, recording every missing key, type error
/// and (once a table has been read) every key left over as unknown. A key whose value
/// cannot be used gets a placeholder and is marked unusable, so validation skips it.
#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    unusable: BTreeSet<String>,
}

impl Reader {
    fn fail(&mut self, path: String, message: impl Into<String>) {
        self.unusable.insert(path.clone());
        self.problems.push(Problem { path, message: message.into() });
    }

    fn config(&mut self, mut table: Table, overrides: &Overrides) -> Config {
        let cluster_id = self.required_string(&mut table, "", "cluster_id");
        let node_id = self.required_u64(&mut table, "", "node_id");
        let data_dir = match &overrides.data_dir {
            Some(dir) => {
                // The override replaces whatever the file or environment said.
                table.remove("data_dir");
                dir.clone()
            }
            None => PathBuf::from(self.required_string(&mut table, "", "data_dir")),
        };
        let grpc_listen = self.optional_string(&mut table, "", "grpc_listen");
        let http_listen = self.optional_string(&mut table, "", "http_listen");
        let members = self.members(&mut table);

        let mut t = self.table(&mut table, "raft");
        let d = RaftConfig::default();
        let raft = RaftConfig {
            heartbeat_interval_ms: self.u64_or(&mut t, "raft", "heartbeat_interval_ms", d.heartbeat_interval_ms),
            election_timeout_min_ms: self.u64_or(&mut t, "raft", "election_timeout_min_ms", d.election_timeout_min_ms),
            election_timeout_max_ms: self.u64_or(&mut t, "raft", "election_timeout_max_ms", d.election_timeout_max_ms),
            install_snapshot_timeout_ms: self.u64_or(
                &mut t,
                "raft",
                "install_snapshot_timeout_ms",
                d.install_snapshot_timeout_ms,
            ),
            max_payload_entries: self.u64_or(&mut t, "raft", "max_payload_entries", d.max_payload_entries),
        };
        self.unknown_keys(t, "raft");

        let mut t = self.table(&mut table, "snapshot");
        let d = SnapshotConfig::default();
        let snapshot = SnapshotConfig {
            logs_since_last: self.u64_or(&mut t, "snapshot", "logs_since_last", d.logs_since_last),
            max_logs_kept: self.u64_or(&mut t, "snapshot", "max_logs_kept", d.max_logs_kept),
            chunk_size_bytes: self.u64_or(&mut t, "snapshot", "chunk_size_bytes", d.chunk_size_bytes),
        };
        self.unknown_keys(t, "snapshot");

        let mut t = self.table(&mut table, "api");
        let d = ApiConfig::default();
        let api = ApiConfig {
            forward_timeout_ms: self.u64_or(&mut t, "api", "forward_timeout_ms", d.forward_timeout_ms),
            drain_timeout_ms: self.u64_or(&mut t, "api", "drain_timeout_ms", d.drain_timeout_ms),
            max_in_flight_proposals: self.u64_or(&mut t, "api", "max_in_flight_proposals", d.max_in_flight_proposals),
            max_payload_bytes: self.u64_or(&mut t, "api", "max_payload_bytes", d.max_payload_bytes),
        };
        self.unknown_keys(t, "api");

        self.unknown_keys(table, "");
        Config { cluster_id, node_id, data_dir, grpc_listen, http_listen, members, raft, snapshot, api }
    }

    fn members(&mut self, table: &mut Table) -> Vec<Member> {
        let entries = match table.remove("members") {
            None => {
                self.fail("members".to_owned(), "missing required key (add [[members]] tables)");
                return Vec::new();
            }
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                self.fail(
                    "members".to_owned(),
                    format!("expected an array of tables ([[members]]), got {}", describe(&other)),
                );
                return Vec::new();
            }
        };
        let mut members = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let prefix = format!("members[{i}]");
            match entry {
                Value::Table(mut t) => {
                    let member = Member {
                        id: self.required_u64(&mut t, &prefix, "id"),
                        grpc_addr: self.required_string(&mut t, &prefix, "grpc_addr"),
                        http_addr: self.required_string(&mut t, &prefix, "http_addr"),
                    };
                    self.unknown_keys(t, &prefix);
                    members.push(member);
                }
                other => {
                    self.fail(prefix, format!("expected a table, got {}", describe(&other)));
                    // A placeholder keeps later indices matching the file.
                    members.push(Member { id: 0, grpc_addr: String::new(), http_addr: String::new() });
                }
            }
        }
        members
    }

    /// Takes the sub-table `key`; an absent one reads as empty, so its keys default.
    fn table(&mut self, table: &mut Table, key: &str) -> Table {
        match table.remove(key) {
            None => Table::new(),
            Some(Value::Table(inner)) => inner,
            Some(other) => {
                self.fail(key.to_owned(), format!("expected a table ([{key}]), got {}", describe(&other)));
                Table::new()
            }
        }
    }

    fn unknown_keys(&mut self, table: Table, prefix: &str) {
        for key in table.keys() {
            self.fail(join(prefix, key), "unknown key");
        }
    }

    fn optional_u64(&mut self, table: &mut Table, prefix: &str, key: &str) -> Option<u64> {
        let value = table.remove(key)?;
        let path = join(prefix, key);
        match value {
            Value::Integer(i) => match u64::try_from(i) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.fail(path, format!("expected a non-negative integer, got {i}"));
                    None
                }
            },
            other => {
                self.fail(path, format!("expected an integer, got {}", describe(&other)));
                None
            }
        }
    }

    fn u64_or(&mut self, table: &mut Table, prefix: &str, key: &str, default: u64) -> u64 {
        self.optional_u64(table, prefix, key).unwrap_or(default)
    }

    fn required_u64(&mut self, table: &mut Table, prefix: &str, key: &str) -> u64 {
        if !table.contains_key(key) {
            self.fail(join(prefix, key), "missing required key");
        }
        self.optional_u64(table, prefix, key).unwrap_or(0)
    }

    fn optional_string(&mut self, table: &mut Table, prefix: &str, key: &str) -> Option<String> {
        match table.remove(key)? {
            Value::String(s) => Some(s),
            other => {
                self.fail(join(prefix, key), format!("expected a string, got {}", describe(&other)));
                None
            }
        }
    }

    fn required_string(&mut self, table: &mut Table, prefix: &str, key: &str) -> String {
        if !table.contains_key(key) {
            self.fail(join(prefix, key), "missing required key");
        }
        self.optional_string(table, prefix, key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_FILES: [&str; 3] = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/node1.toml"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/node2.toml"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/node3.toml"),
    ];

    const MINIMAL: &str = r#"
        cluster_id = "test"
        node_id = 1
        data_dir = "data/test"
        [[members]]
        id = 1
        grpc_addr = "127.0.0.1:7001"
        http_addr = "127.0.0.1:8081"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
        match result {
            Err(ConfigError::Invalid { problems }) => problems,
            other => panic!("expected ConfigError::Invalid, got {other:?}"),
        }
    }

    fn node1() -> Config {
        Config::load(Some(Path::new(NODE_FILES[0])), env(&[]), &Overrides::default())
            .expect("config/node1.toml is valid")
    }

    #[test]
    fn shipped_node_configs_parse_and_validate() {
        let mut memberships = Vec::new();
        for (i, file) in NODE_FILES.iter().enumerate() {
            let n = i as u64 + 1;
            let config = Config::load(Some(Path::new(file)), env(&[]), &Overrides::default())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            config.validate().expect("a loaded config validates");
            assert_eq!(config.cluster_id, "baton-local");
            assert_eq!(config.node_id, n);
            assert_eq!(config.data_dir, PathBuf::from(format!("data/node{n}")));
            assert_eq!(config.me().id, n);
            assert_eq!(config.grpc_listen_addr(), format!("127.0.0.1:700{n}"));
            assert_eq!(config.http_listen_addr(), format!("127.0.0.1:808{n}"));
            assert_eq!(config.raft, RaftConfig::default());
            assert_eq!(config.snapshot, SnapshotConfig::default());
            assert_eq!(config.api, ApiConfig::default());
            memberships.push(config.members);
        }
        assert_eq!(memberships[0].len(), 3);
        assert!(memberships.iter().all(|m| *m == memberships[0]));
    }

    #[test]
    fn unknown_key_wrong_type_and_bad_heartbeat_are_reported_together() {
        let text = r#"
            cluster_id = "test"
            node_id = "x"
            data_dir = "data/test"
            [[members]]
            id = 1
            grpc_addr = "127.0.0.1:7001"
            http_addr = "127.0.0.1:8081"
            [raft]
            hearbeat_ms = 10
            heartbeat_interval_ms = 700
        "#;
        let err = Config::from_toml_str(text).expect_err("three problems");
        let shown = err.to_string();
        assert!(shown.starts_with("invalid configuration (3 problems):\n"), "{shown}");
        assert!(shown.contains(r#"  - node_id: expected an integer, got string "x""#), "{shown}");
        assert!(shown.contains("  - raft.hearbeat_ms: unknown key"), "{shown}");
        assert!(
            shown.contains(
                "  - raft.heartbeat_interval_ms: must be below raft.election_timeout_min_ms (got 700 >= 100)"
            ),
            "{shown}"
        );
        assert_eq!(problems(Err(err)).len(), 3);
    }

    #[test]
    fn missing_required_keys_are_all_reported() {
        let found = problems(Config::from_toml_str(""));
        assert_eq!(
            found,
            [
                "cluster_id: missing required key",
                "node_id: missing required key",
                "data_dir: missing required key",
                "members: missing required key (add [[members]] tables)",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_found_in_every_table_and_member() {
        let text = format!("{MINIMAL}\n port = 1\n[snapshot]\nsize = 1\n[api]\ntimeout = 1\n[extra]\n");
        let found = problems(Config::from_toml_str(&text));
        assert_eq!(
            found,
            [
                "members[0].port: unknown key",
                "snapshot.size: unknown key",
                "api.timeout: unknown key",
                "extra: unknown key",
            ]
        );
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let text = r#"
            cluster_id = "no spaces"
            node_id = 4
            data_dir = ""
            grpc_listen = "0.0.0.0"
            [[members]]
            id = 1
            grpc_addr = "127.0.0.1:7001"
            http_addr = "127.0.0.1:7001"
            [[members]]
            id = 1
            grpc_addr = "127.0.0.1:7001"
            http_addr = "localhost:0"
            [[members]]
            id = 0
            grpc_addr = "[::1]:7003"
            http_addr = "::1:8083"
            [raft]
            heartbeat_interval_ms = 0
            election_timeout_min_ms = 600
            election_timeout_max_ms = 600
            install_snapshot_timeout_ms = 0
            max_payload_entries = 0
            [snapshot]
            logs_since_last = 0
            chunk_size_bytes = 10
            [api]
            forward_timeout_ms = 0
        "#;
        let found = problems(Config::from_toml_str(text));
        let expected = [
            r#"cluster_id: must contain only ASCII letters, digits, '.', '_' and '-' (got "no spaces")"#,
            "data_dir: must not be empty",
            r#"members[0].http_addr: must differ from members[0].grpc_addr (both "127.0.0.1:7001")"#,
            "members[1].id: id 1 is already used by members[0]",
            r#"members[1].grpc_addr: "127.0.0.1:7001" is already used by members[0].grpc_addr"#,
            r#"members[1].http_addr: not a valid host:port address: the port must not be 0 (got "localhost:0")"#,
            "members[2].id: must be at least 1 (got 0)",
            r#"members[2].http_addr: not a valid host:port address: an IPv6 host must be in brackets, as in [::1]:7001 (got "::1:8083")"#,
            "node_id: 4 is not the id of any entry in members (ids: 1, 1, 0)",
            r#"grpc_listen: not a valid host:port address: missing ":port" (got "0.0.0.0")"#,
            "raft.heartbeat_interval_ms: must be at least 1 (got 0)",
            "raft.election_timeout_min_ms: must be below raft.election_timeout_max_ms (got 600 >= 600)",
            "raft.install_snapshot_timeout_ms: must be at least 1 (got 0)",
            "raft.max_payload_entries: must be at least 1 (got 0)",
            "snapshot.logs_since_last: must be at least 1 (got 0)",
            "snapshot.chunk_size_bytes: must be at least 1024 (got 10)",
            "api.forward_timeout_ms: must be at least 1 (got 0)",
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn a_type_error_suppresses_the_rules_that_read_that_key() {
        let text = format!("{MINIMAL}\n[raft]\nelection_timeout_min_ms = -5\n");
        let found = problems(Config::from_toml_str(&text));
        assert_eq!(found, ["raft.election_timeout_min_ms: expected a non-negative integer, got -5"]);
    }

    #[test]
    fn defaults_apply_when_tables_are_absent() {
        let config = Config::from_toml_str(MINIMAL).expect("minimal config is valid");
        assert_eq!(
            config.raft,
            RaftConfig {
                heartbeat_interval_ms: 50,
                election_timeout_min_ms: 100,
                election_timeout_max_ms: 200,
                install_snapshot_timeout_ms: 2000,
                max_payload_entries: 32,
            }
        );
        assert_eq!(
            config.snapshot,
            SnapshotConfig { logs_since_last: 5000, max_logs_kept: 1000, chunk_size_bytes: 1_048_576 }
        );
        assert_eq!(config.api, ApiConfig::default());
        assert_eq!(config.api.forward_timeout_ms, 5000);
        assert_eq!(config.grpc_listen, None);
        assert_eq!(config.grpc_listen_addr(), "127.0.0.1:7001");
    }

    #[test]
    fn env_overrides_nested_keys_and_ignores_others() {
        let vars = env(&[
            ("BATON_RAFT__HEARTBEAT_INTERVAL_MS", "40"),
            ("BATON_API__FORWARD_TIMEOUT_MS", "100"),
            ("BATON_NODE_ID", "2"),
            ("BATON_GRPC_LISTEN", "0.0.0.0:7002"),
            ("BATON_CLUSTER_ID", "42"),
            ("BATON_LOG", "debug"),
            ("PATH", "/usr/bin"),
        ]);
        let config =
            Config::load(Some(Path::new(NODE_FILES[0])), vars, &Overrides::default()).expect("env values are valid");
        assert_eq!(config.raft.heartbeat_interval_ms, 40);
        assert_eq!(config.api.forward_timeout_ms, 100);
        assert_eq!(config.node_id, 2);
        assert_eq!(config.cluster_id, "42");
        assert_eq!(config.grpc_listen_addr(), "0.0.0.0:7002");
        assert_eq!(config.http_listen_addr(), "127.0.0.1:8082");
        // Untouched keys keep the file's values.
        assert_eq!(config.raft.election_timeout_min_ms, 100);
    }

    #[test]
    fn env_creates_tables_missing_from_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("baton.toml");
        std::fs::write(&path, MINIMAL).expect("write config");
        let vars = env(&[("BATON_SNAPSHOT__MAX_LOGS_KEPT", "7")]);
        let config = Config::load(Some(&path), vars, &Overrides::default()).expect("valid config");
        assert_eq!(config.snapshot.max_logs_kept, 7);
        assert_eq!(config.snapshot.logs_since_last, 5000);
    }

    #[test]
    fn env_unknown_keys_and_members_are_problems() {
        let vars = env(&[("BATON_RAFT__FOO", "1"), ("BATON_MEMBERS", "[]"), ("BATON_RAFT", "1")]);
        let found = problems(Config::load(Some(Path::new(NODE_FILES[0])), vars, &Overrides::default()));
        assert_eq!(
            found,
            [
                "BATON_RAFT__FOO: unknown key raft.foo (from environment)",
                "BATON_MEMBERS: members cannot be set from the environment; list them as [[members]] in the config file",
                "BATON_RAFT: raft is a table; set its keys one by one, as in BATON_RAFT__<KEY>",
            ]
        );
    }

    #[test]
    fn env_problems_name_the_variable() {
        let vars = env(&[("BATON_NODE_ID", "x"), ("BATON_RAFT__ELECTION_TIMEOUT_MIN_MS", "10")]);
        let found = problems(Config::load(Some(Path::new(NODE_FILES[0])), vars, &Overrides::default()));
        assert_eq!(
            found,
            [
                r#"node_id: expected an integer, got string "x" (from BATON_NODE_ID)"#,
                "raft.heartbeat_interval_ms: must be below raft.election_timeout_min_ms (got 50 >= 10)",
            ]
        );
    }

    #[test]
    fn overrides_data_dir_wins_over_file_and_env() {
        let file = Some(Path::new(NODE_FILES[0]));
        let vars = env(&[("BATON_DATA_DIR", "/from-env")]);

        let from_env = Config::load(file, vars.clone(), &Overrides::default()).expect("valid");
        assert_eq!(from_env.data_dir, PathBuf::from("/from-env"));

        let overrides = Overrides { data_dir: Some(PathBuf::from("/from-flag")) };
        let from_flag = Config::load(file, vars, &overrides).expect("valid");
        assert_eq!(from_flag.data_dir, PathBuf::from("/from-flag"));
    }

    #[test]
    fn overrides_data_dir_satisfies_a_missing_key() {
        let overrides = Overrides { data_dir: Some(PathBuf::from("/from-flag")) };
        let vars = env(&[("BATON_CLUSTER_ID", "c"), ("BATON_NODE_ID", "1"), ("BATON_DATA_DIR", "ignored")]);
        // No file: members are missing, but data_dir is not.
        let found = problems(Config::load(None, vars, &overrides));
        assert_eq!(found, ["members: missing required key (add [[members]] tables)"]);
    }

    #[test]
    fn to_toml_string_round_trips() {
        let mut config = node1();
        config.grpc_listen = Some("0.0.0.0:7001".to_owned());
        config.raft.heartbeat_interval_ms = 25;
        for original in [node1(), config] {
            let text = original.to_toml_string();
            let back = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, original);
        }
    }

    #[test]
    fn validate_rejects_integers_toml_cannot_hold() {
        let mut config = node1();
        config.api.drain_timeout_ms = u64::MAX;
        let found = problems(config.validate().map(|()| node1()));
        assert_eq!(
            found,
            [format!("api.drain_timeout_ms: {} is too large (TOML integers stop at {})", u64::MAX, i64::MAX)]
        );
    }

    #[test]
    fn env_keys_match_the_serialised_schema() {
        let mut config = node1();
        config.grpc_listen = Some("0.0.0.0:7001".to_owned());
        config.http_listen = Some("0.0.0.0:8081".to_owned());
        let table: Table = config.to_toml_string().parse().expect("valid TOML");
        let mut serialised = BTreeSet::new();
        for (key, value) in &table {
            match value {
                Value::Table(inner) => {
                    serialised.extend(inner.keys().map(|k| format!("{key}.{k}")));
                }
                _ if key != "members" => {
                    serialised.insert(key.clone());
                }
                _ => {}
            }
        }
        let known: BTreeSet<String> = ENV_KEYS.iter().map(|(k, _)| (*k).to_owned()).collect();
        assert_eq!(serialised, known);
    }

    #[test]
    fn unreadable_file_is_a_read_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope.toml");
        let err = Config::load(Some(&missing), env(&[]), &Overrides::default()).expect_err("file does not exist");
        assert!(matches!(err, ConfigError::Read { ref path, .. } if *path == missing));
    }

    #[test]
    fn toml_syntax_error_is_one_problem() {
        let found = problems(Config::from_toml_str("node_id = = 1"));
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("TOML text: not valid TOML:"), "{}", found[0]);
        let shown = ConfigError::Invalid { problems: found }.to_string();
        assert!(shown.starts_with("invalid configuration (1 problem):\n  - "), "{shown}");
    }
}
