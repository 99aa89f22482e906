//! The simulated user: one goose scenario with three transactions.
//!
//! - `start` (on start): draws the user's schedule phase.
//! - `slot` (repeated): waits for the user's next slot on a fixed schedule, takes a new unit
//!   id when the current one has made `requests_per_unit` requests (asking the gateway for
//!   its variant and queueing its `assignment` event), then sends one target request with
//!   that variant. Event batches go to the gateway when a variant's queue is full.
//! - `stop` (on stop): finishes the unit in hand and posts the queued events.
//!
//! Pacing, not think time: a user's slots are `1 / rate_per_user` apart whatever the
//! responses take, so every variant is offered the same load. When a user falls behind
//! (responses slower than the slot interval), it sends the late slots at once and the delay
//! is recorded as `lag_us`, so latency is measured from when each request was due (the
//! wrk2 answer to coordinated omission). Goose's own coordinated-omission mitigation is off.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goose::prelude::*;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::collect::{Collector, NO_VARIANT, Record};
use crate::profile::{Endpoint, Method, Profile, VariantIn};

/// State shared by every user of one run.
#[derive(Debug)]
pub struct Shared {
    pub profile: Profile,
    pub epoch: Instant,
    pub run_id: String,
    pub interval: Duration,
    pub collector: Collector,
    assign_url: String,
    events_url: String,
    /// `names[endpoint][variant]`: goose request names such as `target:treatment`.
    names: Vec<Vec<String>>,
}

impl Shared {
    pub fn new(profile: Profile, run_id: String) -> Self {
        let names = Endpoint::ALL
            .iter()
            .map(|e| {
                profile
                    .variants
                    .iter()
                    .map(|v| format!("{}:{v}", e.as_str()))
                    .collect()
            })
            .collect();
        Shared {
            interval: Duration::from_secs_f64(1.0 / profile.load.rate_per_user),
            collector: Collector::new(profile.variants.len()),
            assign_url: format!("{}/v1/assign", profile.gateway_url),
            events_url: format!("{}/v1/events", profile.gateway_url),
            epoch: Instant::now(),
            run_id,
            names,
            profile,
        }
    }

    fn name(&self, endpoint: Endpoint, variant: usize) -> &str {
        let e = Endpoint::ALL
            .iter()
            .position(|&x| x == endpoint)
            .unwrap_or(0);
        &self.names[e][variant]
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

#[derive(Debug, Clone)]
struct Unit {
    id: String,
    variant: usize,
    remaining: u32,
}

/// Per-user state kept in goose's session data.
#[derive(Debug, Clone, Default)]
struct UserState {
    next_due: Option<Instant>,
    unit: Option<Unit>,
    seq: u64,
    /// Events waiting to be posted, one queue per variant so every batch has one variant.
    queued: Vec<Vec<Value>>,
    /// When the oldest event of each queue was queued.
    oldest: Vec<Option<Instant>>,
}

impl UserState {
    fn queue(&mut self, variant: usize, event: Value) {
        self.oldest[variant].get_or_insert_with(Instant::now);
        self.queued[variant].push(event);
    }
}

pub fn scenario(shared: Arc<Shared>) -> Scenario {
    let (a, b, c) = (shared.clone(), shared.clone(), shared);
    let start: TransactionFunction = Arc::new(move |user| {
        let s = a.clone();
        Box::pin(async move { start(user, &s).await })
    });
    let slot: TransactionFunction = Arc::new(move |user| {
        let s = b.clone();
        Box::pin(async move { slot(user, &s).await })
    });
    let stop: TransactionFunction = Arc::new(move |user| {
        let s = c.clone();
        Box::pin(async move { stop(user, &s).await })
    });
    scenario!("VariantUser")
        .register_transaction(Transaction::new(start).set_name("start").set_on_start())
        .register_transaction(Transaction::new(slot).set_name("slot"))
        .register_transaction(Transaction::new(stop).set_name("stop").set_on_stop())
}

fn take_state(user: &mut GooseUser) -> UserState {
    user.get_session_data_mut::<UserState>()
        .map(std::mem::take)
        .unwrap_or_default()
}

async fn start(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let now = Instant::now();
    shared.collector.user_started(now - shared.epoch);
    // A random phase spreads the users' slots evenly instead of firing them together.
    let phase = shared.interval.mul_f64(rand::rng().random::<f64>());
    user.set_session_data(UserState {
        next_due: Some(now + phase),
        queued: vec![Vec::new(); shared.profile.variants.len()],
        oldest: vec![None; shared.profile.variants.len()],
        ..UserState::default()
    });
    Ok(())
}

async fn slot(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let mut state = take_state(user);
    let result = run_slot(user, shared, &mut state).await;
    user.set_session_data(state);
    result
}

async fn run_slot(
    user: &mut GooseUser,
    shared: &Shared,
    state: &mut UserState,
) -> TransactionResult {
    let now = Instant::now();
    let due = state.next_due.unwrap_or(now);
    let lag = if now < due {
        tokio::time::sleep_until(due.into()).await;
        Duration::ZERO
    } else {
        now - due
    };
    state.next_due = Some(due + shared.interval);

    if state.unit.as_ref().is_none_or(|u| u.remaining == 0) {
        if let Some(done) = state.unit.take() {
            finish_unit(shared, state, &done);
        }
        state.unit = new_unit(user, shared, state).await?;
    }
    if let Some(unit) = state.unit.as_mut() {
        unit.remaining -= 1;
        let variant = unit.variant;
        target_request(user, shared, variant, due, lag).await?;
    }
    // Else the gateway gave no variant: this slot is lost, and the assign error recorded.
    flush_due(user, shared, state).await
}

async fn stop(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    let mut state = take_state(user);
    let now = Instant::now();
    let backlog = match (&state.unit, state.next_due) {
        (Some(unit), Some(due)) if now > due => {
            let late = (now - due).as_secs_f64() / shared.interval.as_secs_f64();
            Some((unit.variant, late as u64 + 1))
        }
        _ => None,
    };
    shared.collector.user_stopped(now - shared.epoch, backlog);
    if let Some(done) = state.unit.take() {
        finish_unit(shared, &mut state, &done);
    }
    for variant in 0..state.queued.len() {
        if !state.queued[variant].is_empty() {
            post_events(user, shared, &mut state, variant).await?;
        }
        // A batch the gateway shed now has no later flush to ride on.
        let left = std::mem::take(&mut state.queued[variant]);
        shared.collector.events_dropped(left.len() as u64);
    }
    user.set_session_data(state);
    Ok(())
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Queues the unit's conversion, if it converts.
fn finish_unit(shared: &Shared, state: &mut UserState, unit: &Unit) {
    let events = &shared.profile.events;
    if rand::rng().random::<f64>() < events.conversion_rate {
        state.queue(
            unit.variant,
            json!({
                "event_id": format!("{}-c", unit.id),
                "type": "conversion",
                "ts": epoch_ms(),
                "user_id": unit.id,
                "name": events.conversion_name,
                "value": events.conversion_value,
                "experiment": shared.profile.events_key,
                "variant": shared.profile.variants[unit.variant],
                "synthetic": true,
            }),
        );
    }
}

/// Posts each queue that is full or has waited `flush_after`.
async fn flush_due(
    user: &mut GooseUser,
    shared: &Shared,
    state: &mut UserState,
) -> TransactionResult {
    let events = &shared.profile.events;
    for variant in 0..state.queued.len() {
        let full = state.queued[variant].len() >= events.batch_size;
        let old = state.oldest[variant].is_some_and(|t| t.elapsed() >= events.flush_after);
        if full || old {
            post_events(user, shared, state, variant).await?;
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct AssignResponse {
    #[serde(default)]
    config_version: Option<String>,
    assignments: Vec<Assignment>,
}

#[derive(Debug, Deserialize)]
struct Assignment {
    experiment: String,
    variant: Option<String>,
    in_experiment: bool,
}

/// How many unit ids a slot may try before giving up when the gateway keeps answering
/// "not in the experiment" (coverage below 1, targeting).
const MAX_UNIT_TRIES: usize = 5;

/// Takes unit ids until the gateway puts one in the experiment.
async fn new_unit(
    user: &mut GooseUser,
    shared: &Shared,
    state: &mut UserState,
) -> Result<Option<Unit>, Box<TransactionError>> {
    let profile = &shared.profile;
    for _ in 0..MAX_UNIT_TRIES {
        state.seq += 1;
        let id = format!(
            "{}-{}-{}",
            shared.run_id, user.weighted_users_index, state.seq
        );
        let body = json!({
            "user_id": id,
            "attributes": {},
            "experiments": [profile.experiment],
            "log_exposure": profile.log_exposure,
            "synthetic": true,
        });
        let sent = Instant::now();
        let response = user
            .client
            .post(&shared.assign_url)
            .json(&body)
            .send()
            .await;
        let latency = sent.elapsed();
        let (status, parsed) = match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let parsed = if r.status().is_success() {
                    r.json::<AssignResponse>().await.map_err(|e| e.to_string())
                } else {
                    Err(format!("status {status}"))
                };
                (Some(status), parsed)
            }
            Err(e) => (None, Err(e.to_string())),
        };
        let config_version = parsed.as_ref().ok().and_then(|a| a.config_version.clone());
        let variant = parsed.as_ref().ok().and_then(|a| {
            let found = a
                .assignments
                .iter()
                .find(|x| x.experiment == profile.experiment)?;
            let name = found.variant.as_deref().filter(|_| found.in_experiment)?;
            profile.variant_index(name)
        });
        let ok = parsed.is_ok();
        let name = match variant {
            Some(v) => shared.name(Endpoint::Assign, v),
            None => "assign:none",
        };
        let error = parsed.as_ref().err().map(String::as_str);
        user.record_custom_request_duration("POST", name, latency, ok, status, error)
            .await?;
        shared.collector.record(Record {
            at_us: shared.since_epoch(sent),
            user: user.weighted_users_index as u32,
            variant: variant.map_or(NO_VARIANT, |v| v as u16),
            endpoint: Endpoint::Assign,
            latency_us: latency.as_micros() as u64,
            lag_us: 0,
            ok,
        });
        if !ok {
            return Ok(None);
        }
        let Some(variant) = variant else {
            shared.collector.unit_excluded();
            continue;
        };
        shared.collector.unit_assigned(variant);
        let mut event = json!({
            "event_id": format!("{id}-a"),
            "type": "assignment",
            "ts": epoch_ms(),
            "user_id": id,
            "experiment": profile.events_key,
            "variant": profile.variants[variant],
            // Load-test traffic: readouts of the lake leave it out.
            "synthetic": true,
        });
        if let Some(version) = config_version {
            event["config_version"] = Value::String(version);
        }
        state.queue(variant, event);
        return Ok(Some(Unit {
            id,
            variant,
            remaining: profile.load.requests_per_unit,
        }));
    }
    Ok(None)
}

async fn target_request(
    user: &mut GooseUser,
    shared: &Shared,
    variant: usize,
    due: Instant,
    lag: Duration,
) -> TransactionResult {
    let target = &shared.profile.target;
    let variant_name = &shared.profile.variants[variant];
    // Absolute, so each variant reaches its own deployment (goose keeps absolute URLs).
    let url = format!("{}{}", target.urls[variant], target.path_for(variant_name));
    let method = match target.method {
        Method::Get => GooseMethod::Get,
        Method::Post => GooseMethod::Post,
    };
    let mut builder = user.get_request_builder(&method, &url)?;
    if target.variant_in == VariantIn::Header {
        builder = builder.header(target.variant_key.as_str(), variant_name.as_str());
    }
    if let Some(body) = &target.body {
        builder = builder
            .header("content-type", "application/json")
            .body(body.clone());
    }
    let request = GooseRequest::builder()
        .name(shared.name(Endpoint::Target, variant))
        .set_request_builder(builder)
        .build();
    let goose = user.request(request).await?;
    shared.collector.record(Record {
        at_us: shared.since_epoch(due.max(shared.epoch)),
        user: user.weighted_users_index as u32,
        variant: variant as u16,
        endpoint: Endpoint::Target,
        latency_us: goose.request.response_time_micros(),
        lag_us: lag.as_micros() as u64,
        ok: goose.request.success,
    });
    // Read the body so the connection goes back to the pool.
    if let Ok(response) = goose.response {
        let _ = response.bytes().await;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct EventsResponse {
    accepted: u64,
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<Value>,
}

/// At most this many batches' worth of events wait for a gateway that answered 503.
const MAX_QUEUED_BATCHES: usize = 4;

async fn post_events(
    user: &mut GooseUser,
    shared: &Shared,
    state: &mut UserState,
    variant: usize,
) -> TransactionResult {
    let batch = std::mem::take(&mut state.queued[variant]);
    state.oldest[variant] = None;
    let count = batch.len() as u64;
    let builder = user.client.post(&shared.events_url).json(&batch);
    let request = GooseRequest::builder()
        .name(shared.name(Endpoint::Events, variant))
        .set_request_builder(builder)
        .build();
    let sent = Instant::now();
    let goose = user.request(request).await?;
    shared.collector.events_posted(count);
    let mut ok = goose.request.success;
    match goose.response {
        Ok(response) if ok => match response.json::<EventsResponse>().await {
            Ok(answer) => shared.collector.events_answered(
                answer.accepted,
                answer.duplicates,
                answer.rejected.len() as u64,
            ),
            Err(_) => ok = false,
        },
        _ => {
            // Keep the batch for the next flush if the gateway shed it, within a bound.
            let limit = MAX_QUEUED_BATCHES * shared.profile.events.batch_size;
            if goose.request.status_code == 503
                && state.queued[variant].len() + batch.len() <= limit
            {
                // Retried at the next flush, one `flush_after` later: the gateway's
                // Retry-After is seconds, the same order.
                state.oldest[variant].get_or_insert(sent);
                state.queued[variant].extend(batch);
            } else {
                shared.collector.events_dropped(count);
            }
        }
    }
    shared.collector.record(Record {
        at_us: shared.since_epoch(sent),
        user: user.weighted_users_index as u32,
        variant: variant as u16,
        endpoint: Endpoint::Events,
        latency_us: goose.request.response_time_micros(),
        lag_us: 0,
        ok,
    });
    Ok(())
}
