//! Cron schedules: a dispatch template the gateway fires on a cron expression.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::CreateDispatch;

/// What a fire does while the schedule's previous run is still queued or running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start another run alongside.
    #[default]
    Allow,
    /// Skip this fire.
    Skip,
    /// Cancel the running one (reason "superseded by schedule …"), then start.
    CancelPrevious,
    /// Hold this fire until the previous run ends, then start it.
    Queue,
}

/// Which missed fires a schedule makes up for after a gap (all replicas down, paused, queued).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    /// None: a fire found more than 60 s after its instant is skipped.
    None,
    /// Only the most recent missed fire.
    #[default]
    Latest,
    /// Every missed fire, oldest first, at most `max_catchup` of them (the most recent ones).
    All,
}

/// `POST /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "nightly-retrain",
    "cron": "0 2 * * *",
    "timezone": "Europe/Berlin",
    "dispatch": {"function": "pipeline.train:fit", "args": [0.01], "cluster": "train", "timeout_s": 3600},
    "overlap": "skip",
    "catchup": "latest"
}))]
pub struct CreateSchedule {
    /// Unique among the project's schedules. 1–64 of `[A-Za-z0-9._-]`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// POSIX cron: 5 fields (minute hour day month weekday), 6 with seconds
    /// first, or `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`.
    #[schema(min_length = 1, max_length = 255, example = "0 2 * * *")]
    pub cron: String,
    /// The IANA zone the expression is read in (default `UTC`). A local
    /// time that does not exist fires once at the end of the gap; one that
    /// occurs twice fires once, at its first occurrence.
    #[serde(default = "utc")]
    #[schema(max_length = 64, example = "Europe/Berlin")]
    pub timezone: String,
    /// The dispatch each fire creates (no `idempotency_key`: each fire's is
    /// derived from the schedule and its instant, so replicas racing to fire
    /// it make one dispatch). Fires add the labels `schedule` and `scheduled_for`.
    pub dispatch: CreateDispatch,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catchup: Catchup,
    /// With `catchup: all`, the most missed fires made up for (1 to 1000, default 10).
    #[serde(default = "default_max_catchup")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_catchup: u32,
    /// Created paused: no fire until resumed.
    #[serde(default)]
    pub paused: bool,
    /// No fire before this instant.
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    /// No fire after this instant (after `start_at`).
    #[serde(default)]
    pub end_at: Option<DateTime<Utc>>,
}

fn utc() -> String {
    "UTC".into()
}

fn default_max_catchup() -> u32 {
    10
}

/// `PATCH /v1/schedules/{name}`: the fields to change; the others stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"paused": true}))]
pub struct UpdateSchedule {
    #[schema(min_length = 1, max_length = 255)]
    pub cron: Option<String>,
    #[schema(max_length = 64)]
    pub timezone: Option<String>,
    pub dispatch: Option<CreateDispatch>,
    pub overlap: Option<Overlap>,
    pub catchup: Option<Catchup>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_catchup: Option<u32>,
    /// `true` pauses, `false` resumes (from the next fire after now).
    pub paused: Option<bool>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
}

/// A schedule and its next fire times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub dispatch: CreateDispatch,
    pub overlap: Overlap,
    pub catchup: Catchup,
    pub max_catchup: u32,
    pub paused: bool,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    /// The next instant it fires (None when paused or past `end_at`).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Its next five fire times (empty when paused or past `end_at`).
    pub upcoming: Vec<DateTime<Utc>>,
    /// The instant it last fired for.
    pub last_fired_for: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub items: Vec<Schedule>,
}
