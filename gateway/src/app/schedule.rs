//! Schedule use cases: create, read, list, change, delete, list runs, and the
//! firer step that turns due instants into dispatches.
//!
//! Exactly once: a fire's dispatch carries the idempotency key
//! `schedule:<id>:<instant>`, so replicas racing on one instant (or a replica
//! that fired and died before recording it) make one dispatch. The firer
//! works on one schedule at a time under a row lock taken with
//! `FOR UPDATE SKIP LOCKED` and moves `next_fire_at` in that transaction.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::App;
use crate::auth::{Caller, Scope};
use crate::db::schedule::ScheduleRow;
use crate::db::DispatchRow;
use crate::schedule::CronSpec;
use crate::{Error, Result};

/// How many upcoming fire times a schedule shows.
const UPCOMING: usize = 5;
/// With `catchup: none`, a fire found later than this after its instant is skipped.
const FIRE_GRACE_S: i64 = 60;
/// Most schedules one firer step handles (the rest wait for the next step).
const MAX_PER_STEP: usize = 100;
/// How often the firer looks for due schedules when nothing wakes it sooner.
pub const FIRER_PERIOD: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_CRON: usize = 255;
const MAX_TIMEZONE: usize = 64;

impl App {
    /// Records a schedule; its first fire is the first instant after now (and after `start_at`).
    pub async fn schedule_create(&self, caller: &Caller, req: wire::CreateSchedule) -> Result<wire::Schedule> {
        super::dispatch::validate_name("name", &req.name)?;
        let spec = parse(&req.cron, &req.timezone)?;
        check_window(req.start_at, req.end_at)?;
        check_max_catchup(req.max_catchup)?;
        self.check_template(caller, &req.dispatch).await?;
        let next = first_fire(&spec, Utc::now(), req.start_at, req.end_at);
        let row = ScheduleRow {
            schedule_id: Uuid::now_v7(),
            project: caller.project.clone(),
            name: req.name.clone(),
            cron: req.cron.trim().to_owned(),
            timezone: spec.timezone().name().to_owned(),
            template: serde_json::to_value(&req.dispatch).map_err(|e| Error::Internal(e.into()))?,
            overlap: enum_str(&req.overlap),
            catchup: enum_str(&req.catchup),
            max_catchup: req.max_catchup as i32,
            paused: req.paused,
            start_at: req.start_at,
            end_at: req.end_at,
            next_fire_at: next,
            last_fired_for: None,
            created_by: caller.sub.clone(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let stored =
            self.db.schedule_insert(&row).await?.ok_or_else(|| Error::ScheduleExists { name: req.name.clone() })?;
        self.scheduler.notify_one();
        view(stored)
    }

    /// One schedule of the caller's project.
    pub async fn schedule_get(&self, caller: &Caller, name: &str) -> Result<wire::Schedule> {
        view(self.schedule_row(caller, name).await?)
    }

    /// The caller's project's schedules, by name.
    pub async fn schedule_list(&self, caller: &Caller) -> Result<Vec<wire::Schedule>> {
        self.db.schedule_list(&caller.project).await?.into_iter().map(view).collect()
    }

    /// Changes the given fields. Changing the timing (or resuming) moves the
    /// next fire to the first instant after now: missed fires are not made up.
    pub async fn schedule_update(
        &self,
        caller: &Caller,
        name: &str,
        req: wire::UpdateSchedule,
    ) -> Result<wire::Schedule> {
        let mut row = self.schedule_row(caller, name).await?;
        let retime = req.cron.is_some()
            || req.timezone.is_some()
            || req.start_at.is_some()
            || req.end_at.is_some()
            || (req.paused == Some(false) && row.paused);
        if let Some(cron) = req.cron {
            row.cron = cron.trim().to_owned();
        }
        if let Some(timezone) = req.timezone {
            row.timezone = timezone;
        }
        let spec = parse(&row.cron, &row.timezone)?;
        row.timezone = spec.timezone().name().to_owned();
        if req.start_at.is_some() {
            row.start_at = req.start_at;
        }
        if req.end_at.is_some() {
            row.end_at = req.end_at;
        }
        check_window(row.start_at, row.end_at)?;
        if let Some(dispatch) = req.dispatch {
            self.check_template(caller, &dispatch).await?;
            row.template = serde_json::to_value(&dispatch).map_err(|e| Error::Internal(e.into()))?;
        }
        if let Some(overlap) = req.overlap {
            row.overlap = enum_str(&overlap);
        }
        if let Some(catchup) = req.catchup {
            row.catchup = enum_str(&catchup);
        }
        if let Some(max) = req.max_catchup {
            check_max_catchup(max)?;
            row.max_catchup = max as i32;
        }
        if let Some(paused) = req.paused {
            row.paused = paused;
        }
        if retime {
            row.next_fire_at = first_fire(&spec, Utc::now(), row.start_at, row.end_at);
        }
        let stored = self.db.schedule_update(&row).await?.ok_or_else(|| not_found(name))?;
        self.scheduler.notify_one();
        view(stored)
    }

    /// Deletes a schedule. Its dispatches stay (and keep running).
    pub async fn schedule_delete(&self, caller: &Caller, name: &str) -> Result<()> {
        if !self.db.schedule_delete(&caller.project, name).await? {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// The schedule's dispatches, newest first (`GET /v1/dispatches` with its label).
    pub async fn schedule_runs(
        &self,
        caller: &Caller,
        name: &str,
        mut query: wire::ListDispatches,
    ) -> Result<(Vec<DispatchRow>, Option<String>)> {
        self.schedule_row(caller, name).await?;
        query.label.retain(|l| !l.starts_with("schedule="));
        query.label.push(format!("schedule={name}"));
        self.dispatch_list(caller, query).await
    }

    async fn schedule_row(&self, caller: &Caller, name: &str) -> Result<ScheduleRow> {
        self.db.schedule_get(&caller.project, name).await?.ok_or_else(|| not_found(name))
    }

    /// The template must be a dispatch the caller could create now (its
    /// cluster may not exist yet), without an idempotency key.
    async fn check_template(&self, caller: &Caller, template: &wire::CreateDispatch) -> Result<()> {
        if template.idempotency_key.is_some() {
            return Err(Error::invalid(
                "dispatch.idempotency_key",
                "a schedule's dispatch takes no `idempotency_key`: each fire's is derived from the schedule and its instant",
            ));
        }
        if template.labels.contains_key("schedule") || template.labels.contains_key("scheduled_for") {
            return Err(Error::invalid(
                "dispatch.labels",
                "the labels `schedule` and `scheduled_for` are set by each fire; remove them",
            ));
        }
        self.dispatch_validate(caller, template).await.map_err(|err| match err {
            Error::InvalidField { field, message } => {
                Error::InvalidField { field: format!("dispatch.{field}"), message }
            }
            other => other,
        })
    }

    /// One firer pass: fires every due schedule (at most [`MAX_PER_STEP`]).
    /// Safe on any number of replicas at once.
    pub async fn schedule_fire_step(&self) -> Result<Value> {
        let (mut fired, mut skipped, mut held) = (0, 0, 0);
        // Schedules seen this pass (a `queue` schedule held back stays due).
        let mut seen: Vec<Uuid> = Vec::new();
        while seen.len() < MAX_PER_STEP {
            let now = Utc::now();
            let Some(claim) = self.db.schedule_claim_due(now, &seen).await? else { break };
            let row = claim.row.clone();
            seen.push(row.schedule_id);
            let Ok(spec) = parse(&row.cron, &row.timezone) else {
                // Stored rows were validated; a zone gone from the tz database
                // stops its schedule rather than the firer.
                tracing::warn!(schedule = %row.name, "schedule no longer parses; stopping it");
                claim.advance(None, None).await?;
                continue;
            };
            let due = due_instants(&spec, &row, now);
            skipped += due.missed;
            let mut last = None;
            let mut held_at = None;
            for (instant, fire) in due.instants {
                if fire {
                    match self.schedule_fire_one(&row, instant).await? {
                        Fired::Created => fired += 1,
                        Fired::Skipped => skipped += 1,
                        Fired::Held => {
                            held += 1;
                            held_at = Some(instant);
                            break;
                        }
                    }
                } else {
                    skipped += 1;
                }
                last = Some(instant);
            }
            let next = match held_at {
                // `queue`: the instant stays due until the previous run ends.
                Some(instant) => Some(instant),
                None => first_fire(&spec, due.after, row.start_at, row.end_at),
            };
            claim.advance(next, last).await?;
        }
        // The period bounds how late a fire can be; a timer set for the next
        // due instant makes it fire on time.
        if let Some(next) = self.db.schedule_next_due().await? {
            // (+1 ms: the timer's clock is not the wall clock the instant is on.)
            let wait = (next - Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_millis(1);
            if wait < FIRER_PERIOD {
                let scheduler = self.scheduler.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    scheduler.notify_one();
                });
            }
        }
        Ok(json!({ "fired": fired, "skipped": skipped, "held": held }))
    }

    async fn schedule_fire_one(&self, row: &ScheduleRow, instant: DateTime<Utc>) -> Result<Fired> {
        let caller = Caller::acting_for(&row.project, format!("schedule:{}", row.name), &[Scope::DispatchWrite]);
        let active = if row.overlap == "allow" { Vec::new() } else { self.schedule_active_runs(&caller, row).await? };
        match row.overlap.as_str() {
            "skip" if !active.is_empty() => return Ok(Fired::Skipped),
            "queue" if !active.is_empty() => return Ok(Fired::Held),
            "cancel_previous" => {
                let reason = format!(
                    "superseded by schedule {}'s run for {}",
                    row.name,
                    instant.to_rfc3339_opts(SecondsFormat::Secs, true)
                );
                for previous in active {
                    if let Err(err) = self.dispatch_cancel(&caller, previous.dispatch_id, Some(reason.clone())).await {
                        tracing::warn!(schedule = %row.name, dispatch_id = %previous.dispatch_id, error = %err,
                            "could not cancel the previous run");
                    }
                }
            }
            _ => {}
        }
        let mut req: wire::CreateDispatch =
            serde_json::from_value(row.template.clone()).map_err(|e| Error::Internal(e.into()))?;
        let at = instant.to_rfc3339_opts(SecondsFormat::Secs, true);
        req.labels.insert("schedule".into(), row.name.clone());
        req.labels.insert("scheduled_for".into(), at.clone());
        req.idempotency_key = Some(format!("schedule:{}:{at}", row.schedule_id));
        match self.dispatch_create(&caller, req, None).await {
            Ok(_) => Ok(Fired::Created),
            // The template no longer makes a valid dispatch (a function deleted, say):
            // this fire is lost, not the schedule; say so in the log.
            Err(err @ (Error::InvalidField { .. } | Error::NotFound { .. })) => {
                tracing::warn!(schedule = %row.name, error = %err, "a schedule's fire was refused");
                Ok(Fired::Skipped)
            }
            Err(err) => Err(err),
        }
    }

    async fn schedule_active_runs(&self, caller: &Caller, row: &ScheduleRow) -> Result<Vec<DispatchRow>> {
        let query = wire::ListDispatches {
            state: ["queued", "running", "cancelling"].map(str::to_owned).to_vec(),
            label: vec![format!("schedule={}", row.name)],
            limit: Some(500),
            ..wire::ListDispatches::default()
        };
        Ok(self.dispatch_list(caller, query).await?.0)
    }
}

/// What one fire did.
enum Fired {
    Created,
    /// Not fired (`overlap: skip`, or the template was refused).
    Skipped,
    /// `overlap: queue` and the previous run is still going: try again later.
    Held,
}

/// The instants a due schedule covers now, each with whether to fire it.
struct Due {
    instants: Vec<(DateTime<Utc>, bool)>,
    /// Missed instants dropped by the catchup policy before those.
    missed: usize,
    /// The last instant covered: the next fire comes after it.
    after: DateTime<Utc>,
}

/// The last missed instants from `next_fire_at` up to `now` that the catchup
/// policy may fire: the last `max_catchup` for `all`, else the last one
/// (which `none` fires only if it is at most [`FIRE_GRACE_S`] late).
fn due_instants(spec: &CronSpec, row: &ScheduleRow, now: DateTime<Utc>) -> Due {
    let Some(first) = row.next_fire_at else { return Due { instants: vec![], missed: 0, after: now } };
    // `queue` fires the instant it held back, whatever the catchup policy says
    // of the instants missed after it.
    let head = (row.overlap == "queue").then_some(first);
    let window = if row.catchup == "all" { row.max_catchup.max(1) as usize } else { 1 };
    let mut recent = std::collections::VecDeque::new();
    if head.is_none() {
        recent.push_back(first);
    }
    let (mut missed, mut at) = (0, first);
    while let Some(next) = spec.next_after(at) {
        if next > now || row.end_at.is_some_and(|end| next > end) {
            break;
        }
        at = next;
        recent.push_back(next);
        if recent.len() > window {
            recent.pop_front();
            missed += 1;
        }
    }
    let policy = |t: DateTime<Utc>| row.catchup != "none" || (now - t).num_seconds() <= FIRE_GRACE_S;
    let instants = head.map(|h| (h, true)).into_iter().chain(recent.into_iter().map(|t| (t, policy(t)))).collect();
    Due { instants, missed, after: at }
}

/// The first fire strictly after `after`, not before `start_at` and not after `end_at`.
fn first_fire(
    spec: &CronSpec,
    after: DateTime<Utc>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let from = match start_at {
        // `start_at` itself may fire: look from just before it.
        Some(start) if start > after => start - chrono::Duration::milliseconds(1),
        _ => after,
    };
    spec.next_after(from).filter(|t| end_at.is_none_or(|end| *t <= end))
}

fn parse(cron: &str, timezone: &str) -> Result<CronSpec> {
    if cron.len() > MAX_CRON {
        return Err(Error::invalid("cron", format!("`cron` must be at most {MAX_CRON} characters")));
    }
    if timezone.len() > MAX_TIMEZONE {
        return Err(Error::invalid("timezone", format!("`timezone` must be at most {MAX_TIMEZONE} characters")));
    }
    CronSpec::parse(cron, timezone).map_err(|e| Error::invalid(e.field(), e.to_string()))
}

fn check_window(start_at: Option<DateTime<Utc>>, end_at: Option<DateTime<Utc>>) -> Result<()> {
    if let (Some(start), Some(end)) = (start_at, end_at) {
        if end <= start {
            return Err(Error::invalid("end_at", "`end_at` must be after `start_at`"));
        }
    }
    Ok(())
}

fn check_max_catchup(max: u32) -> Result<()> {
    if !(1..=1000).contains(&max) {
        return Err(Error::invalid("max_catchup", "`max_catchup` must be 1 to 1000"));
    }
    Ok(())
}

fn enum_str<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn not_found(name: &str) -> Error {
    Error::NotFound { kind: "schedule", id: name.to_owned() }
}

fn view(row: ScheduleRow) -> Result<wire::Schedule> {
    let internal = |e: serde_json::Error| Error::Internal(e.into());
    let upcoming = match (&row.next_fire_at, row.paused, CronSpec::parse(&row.cron, &row.timezone)) {
        (Some(next), false, Ok(spec)) => {
            let mut times = vec![*next];
            times.extend(spec.upcoming(*next, UPCOMING - 1));
            times.retain(|t| row.end_at.is_none_or(|end| *t <= end));
            times
        }
        _ => Vec::new(),
    };
    Ok(wire::Schedule {
        id: row.schedule_id,
        project: row.project,
        name: row.name,
        cron: row.cron,
        timezone: row.timezone,
        dispatch: serde_json::from_value(row.template).map_err(internal)?,
        overlap: serde_json::from_value(Value::String(row.overlap)).map_err(internal)?,
        catchup: serde_json::from_value(Value::String(row.catchup)).map_err(internal)?,
        max_catchup: row.max_catchup as u32,
        paused: row.paused,
        start_at: row.start_at,
        end_at: row.end_at,
        next_fire_at: if row.paused { None } else { row.next_fire_at },
        upcoming,
        last_fired_for: row.last_fired_for,
        created_by: row.created_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
