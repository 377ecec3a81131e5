//! The ordered list of upstreams. Each request gets an [`AttemptPlan`]: upstreams in
//! priority order (a group's members ranked for the request), drained ones left out, open
//! breakers and `Retry-After`s deferred to the last resort, suspects and recent bad sources
//! for the digest after the others, pulls after the others at an upstream within its
//! rate-limit reserve, and a bounded number of attempts. Attempts are hedged: if one has no answer within its hedge delay
//! (by default a multiple of that upstream's own recent times to headers), the next starts beside it.

use super::breaker::{Admission, BreakerConfig};
use super::client::UpstreamClient;
use super::failure::{UpstreamFailure, UpstreamsExhausted};
use super::route::{Route, order_groups};
use super::settings::UpstreamConfig;
use crate::oci::Digest;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a request costs at an upstream, for ordering around registries' pull quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestCost {
    /// HEADs, blobs, lists: no pull counted; priority order.
    Free,
    /// A manifest GET, which Docker Hub counts as a pull: upstreams within their
    /// `ratelimit_reserve` are asked after the others.
    Pull,
    /// A pull that must not spend any reserve (the caller has a stale answer to give
    /// instead): upstreams within their reserve are left out.
    PullSparingReserve,
}

/// Bound on remembered (upstream, digest) bad sources; the oldest are forgotten first.
const MAX_BAD_SOURCES: usize = 10_000;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub failover_on_not_found: bool,
    pub(crate) bad_source_skip: Duration,
    /// Attempts allowed beyond one per upstream (resuming from the same upstream, etc.).
    pub retry_budget: usize,
    /// When to start the next upstream alongside one that has not answered yet.
    pub hedging: Hedging,
    /// A blob body that was flowing and goes quiet for far longer than its own recent gaps,
    /// and at least this long, is resumed from the next upstream (the quiet one kept as a
    /// hedge). `None`: only the fixed body timeouts apply.
    pub stall_floor: Option<Duration>,
    pub breaker: BreakerConfig,
    /// Shared by every upstream: bodies read whole stay under it together.
    pub memory: super::MemoryBudget,
    /// Where suspect upstreams are remembered across restarts (beside the cache); `None`:
    /// in memory only.
    pub suspects: Option<Arc<super::suspects::SuspectFile>>,
}

/// Hedging: starting the next upstream alongside one that is silent, so a blackholed upstream
/// costs a request a fraction of a second rather than its whole header timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hedging {
    Off,
    /// After this fixed delay.
    After(Duration),
    /// After a delay derived from the upstream's own recent times to headers (the default).
    Adaptive,
}

/// Adaptive hedging waits this many times the upstream's slowest recent time to headers...
const HEDGE_FACTOR: u32 = 3;
/// ...but at least this long (a hedge to a group's next member or to a registry costs egress)...
pub(crate) const HEDGE_FLOOR: Duration = Duration::from_millis(250);
/// ...and at most this long: a silent upstream costs a request no more than this.
pub(crate) const HEDGE_CAP: Duration = Duration::from_secs(1);
/// Before an upstream's first answer, its hedge delay is this.
pub(crate) const HEDGE_BEFORE_FIRST_ANSWER: Duration = Duration::from_millis(500);
/// The default `stall_floor`.
pub const DEFAULT_STALL_FLOOR: Duration = Duration::from_secs(1);
/// An upstream group's members are ferries with failover of their own underneath (AZ
/// replicas): adaptive hedges and stall judgements against them wait this many times longer,
/// so the tier below acts first and a host does not start a second fill on another replica.
pub(crate) const GROUP_MEMBER_PATIENCE: u32 = 3;

/// How much longer than a registry an upstream is given before it is judged silent.
fn patience(client: &UpstreamClient) -> u32 {
    if client.config().group.is_some() {
        GROUP_MEMBER_PATIENCE
    } else {
        1
    }
}

impl Hedging {
    /// How long an attempt at `client` may stay silent before the next upstream starts.
    pub(crate) fn delay_for(self, client: &UpstreamClient) -> Option<Duration> {
        match self {
            Hedging::Off => None,
            Hedging::After(delay) => Some(delay),
            Hedging::Adaptive => {
                let patience = patience(client);
                Some(match client.health().slowest_recent_answer() {
                    None => HEDGE_BEFORE_FIRST_ANSWER * patience,
                    Some(slowest) => {
                        (slowest * HEDGE_FACTOR).clamp(HEDGE_FLOOR * patience, HEDGE_CAP * patience)
                    }
                })
            }
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            failover_on_not_found: true,
            bad_source_skip: Duration::from_secs(300),
            retry_budget: 2,
            hedging: Hedging::Adaptive,
            stall_floor: Some(DEFAULT_STALL_FLOOR),
            breaker: BreakerConfig::default(),
            memory: Default::default(),
            suspects: None,
        }
    }
}

pub struct Upstreams {
    clients: Vec<Arc<UpstreamClient>>,
    settings: PoolSettings,
    /// The registry these upstreams serve (a metrics label).
    registry: String,
    metrics: Arc<crate::metrics::Metrics>,
    /// (upstream name, digest) -> when the upstream stops being skipped for that digest.
    bad_sources: Mutex<HashMap<(String, Digest), Instant>>,
}

/// The upstreams one request (or one fill, across its resumes) may still try, in order.
///
/// An upstream whose breaker is open is deferred, not dropped: once the others are spent it
/// is tried as the last resort, in configured order, so a request fails only after every
/// upstream was asked. Attempts are bounded by one per upstream plus the retry budget, and a
/// second try of one upstream never takes an attempt an untried upstream still needs.
#[derive(Clone)]
pub struct AttemptPlan {
    order: Vec<Arc<UpstreamClient>>,
    position: usize,
    /// Upstreams skipped because their breaker was open, in the order they were met.
    deferred: Vec<Arc<UpstreamClient>>,
    /// Set once the deferred upstreams were queued: no admission check from then on.
    last_resort: bool,
    /// Distinct upstreams in the plan, and the names of those already attempted.
    members: usize,
    tried: Vec<String>,
    attempted: usize,
    budget: usize,
    requeued: Vec<String>,
}

impl AttemptPlan {
    fn new(order: Vec<Arc<UpstreamClient>>, retry_budget: usize) -> Self {
        AttemptPlan {
            budget: order.len() + retry_budget,
            members: order.len(),
            order,
            position: 0,
            deferred: Vec::new(),
            last_resort: false,
            tried: Vec::new(),
            attempted: 0,
            requeued: Vec::new(),
        }
    }

    /// The next upstream to try, or `None` when the plan is spent.
    pub(crate) fn next_upstream(&mut self) -> Option<Arc<UpstreamClient>> {
        while self.attempted < self.budget {
            if self.position >= self.order.len() {
                if self.deferred.is_empty() {
                    return None;
                }
                // Everything else was tried: the upstreams skipped for an open breaker
                // are the last resort (a success there closes the breaker).
                tracing::info!(
                    upstreams = ?self.deferred.iter().map(|c| c.name()).collect::<Vec<_>>(),
                    "trying upstreams with an open breaker as the last resort"
                );
                self.last_resort = true;
                let deferred = std::mem::take(&mut self.deferred);
                self.order.extend(deferred);
                continue;
            }
            let client = self.order[self.position].clone();
            self.position += 1;
            let first_try = !self.tried.iter().any(|n| n == client.name());
            if !first_try && self.budget - self.attempted <= self.untried_count() {
                // A retry of this one would take the attempt an untried upstream needs.
                continue;
            }
            // Inside a Retry-After, or behind an open breaker: deferred to the last resort
            // (checked in that order, so a held-off upstream takes no breaker probe).
            if !self.last_resort
                && (client.health().quota().held_off()
                    || client.health().admit() == Admission::Rejected)
            {
                if !self.deferred.iter().any(|d| d.name() == client.name()) {
                    self.deferred.push(client);
                }
                continue;
            }
            if first_try {
                self.tried.push(client.name().to_owned());
            }
            self.attempted += 1;
            return Some(client);
        }
        None
    }

    fn untried_count(&self) -> usize {
        self.members.saturating_sub(self.tried.len())
    }

    /// Lets `client` be tried once more at the end of the plan (a resume from the same
    /// upstream); returns false if it already had its second chance.
    pub(crate) fn requeue_once(&mut self, client: &Arc<UpstreamClient>) -> bool {
        if self.requeued.iter().any(|n| n == client.name()) {
            return false;
        }
        self.requeued.push(client.name().to_owned());
        self.order.push(client.clone());
        true
    }

    /// Upstreams of the plan never attempted (only possible when it stopped early).
    pub(crate) fn untried(&self) -> Vec<String> {
        self.order
            .iter()
            .chain(&self.deferred)
            .map(|c| c.name())
            .filter(|name| !self.tried.iter().any(|t| t == name))
            .fold(Vec::new(), |mut names, name| {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
                names
            })
    }

    /// What the client is told when this plan produced no answer: the failures seen, and
    /// the upstreams never asked unless the last failure was authoritative (a 404 with
    /// not-found failover off).
    pub(crate) fn exhausted(
        &self,
        failures: Vec<UpstreamFailure>,
        failover_on_not_found: bool,
    ) -> UpstreamsExhausted {
        let stopped_by_answer = failures
            .last()
            .is_some_and(|f| !f.may_try_next(failover_on_not_found));
        UpstreamsExhausted {
            untried: if stopped_by_answer {
                Vec::new()
            } else {
                self.untried()
            },
            failures,
        }
    }
}

impl Upstreams {
    pub fn new(
        configs: &[UpstreamConfig],
        settings: PoolSettings,
        registry: &str,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, super::settings::SetupError> {
        let clients = configs
            .iter()
            .map(|c| {
                UpstreamClient::new(c.clone(), settings.breaker, settings.memory.clone())
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(file) = &settings.suspects {
            let suspects = file.load();
            for client in &clients {
                if let Some(still) = suspects.get(client.name()) {
                    client.health().restore_suspect(*still);
                }
            }
        }
        Ok(Upstreams {
            clients,
            settings,
            registry: registry.to_owned(),
            metrics,
            bad_sources: Mutex::new(HashMap::new()),
        })
    }

    pub fn failover_on_not_found(&self) -> bool {
        self.settings.failover_on_not_found
    }

    /// See [`PoolSettings::stall_floor`]; longer for a group member (see
    /// [`GROUP_MEMBER_PATIENCE`]).
    pub(crate) fn stall_floor_for(&self, client: &UpstreamClient) -> Option<Duration> {
        self.settings
            .stall_floor
            .map(|floor| floor * patience(client))
    }

    /// Counts a body resumed elsewhere because it stalled against its own pace.
    pub(crate) fn note_stall_resume(&self, stalled: &UpstreamClient) {
        self.count(&self.metrics.stall_resumes, stalled);
    }

    /// Counts a hedge: the next upstream started because `slow` was silent.
    pub(crate) fn note_hedge(&self, slow: &UpstreamClient, delay: Duration) {
        tracing::info!(
            upstream = slow.name(),
            ?delay,
            "hedging: starting the next upstream alongside a silent one"
        );
        self.count(&self.metrics.hedges, slow);
    }

    fn count(
        &self,
        family: &prometheus_client::metrics::family::Family<
            crate::metrics::UpstreamLabels,
            prometheus_client::metrics::counter::Counter,
        >,
        client: &UpstreamClient,
    ) {
        family
            .get_or_create(&crate::metrics::UpstreamLabels {
                registry: self.registry.clone(),
                upstream: client.name().to_owned(),
            })
            .inc();
    }

    pub fn clients(&self) -> &[Arc<UpstreamClient>] {
        &self.clients
    }

    pub fn find(&self, name: &str) -> Option<&Arc<UpstreamClient>> {
        self.clients.iter().find(|c| c.name() == name)
    }

    /// A fresh plan for a request that costs no pull (see [`Upstreams::plan_costing`]).
    pub(crate) fn plan(&self, route: Route<'_>) -> AttemptPlan {
        self.plan_costing(route, RequestCost::Free)
    }

    /// A fresh plan for one request: drained upstreams left out, each group's members
    /// ranked for `route`; for a digest, suspect upstreams after the others and those that
    /// recently sent bad bytes for it at the end; for a pull, upstreams within their
    /// rate-limit reserve after the others (or left out, sparing the reserve).
    pub(crate) fn plan_costing(&self, route: Route<'_>, cost: RequestCost) -> AttemptPlan {
        let now = Instant::now();
        let in_rotation: Vec<_> = self
            .clients
            .iter()
            .filter(|c| !c.health().is_drained())
            .cloned()
            .collect();
        let in_rotation = order_groups(in_rotation, route, &self.registry).into_iter();
        // `order`, then `last`: the upstreams that sent bad bytes for this very digest.
        let (order, last): (Vec<_>, Vec<_>) = match route.digest() {
            None => (in_rotation.collect(), Vec::new()),
            Some(digest) => {
                let bad = self.lock_bad_sources();
                let is_bad = |client: &UpstreamClient| {
                    bad.get(&(client.name().to_owned(), digest.clone()))
                        .is_some_and(|until| *until > now)
                };
                let (good, mut skipped): (Vec<_>, Vec<_>) = in_rotation.partition(|c| !is_bad(c));
                // An upstream that sent wrong bytes for any digest lately goes after the
                // others for every digest.
                let (mut trusted, suspects): (Vec<_>, Vec<_>) =
                    good.into_iter().partition(|c| !c.health().is_suspect());
                // Among recent bad sources, the one marked longest ago goes first: two
                // upstreams that each lied once take turns, rather than the latest liar
                // being asked again while the other has recovered.
                skipped.sort_by_key(|c| bad.get(&(c.name().to_owned(), digest.clone())).copied());
                trusted.extend(suspects);
                (trusted, skipped)
            }
        };
        let mut order = match cost {
            RequestCost::Free => order,
            RequestCost::Pull => {
                let (mut outside, within): (Vec<_>, Vec<_>) =
                    order.into_iter().partition(|c| !c.health().in_reserve());
                outside.extend(within);
                outside
            }
            RequestCost::PullSparingReserve => order
                .into_iter()
                .filter(|c| !c.health().in_reserve())
                .collect(),
        };
        order.extend(
            last.into_iter()
                .filter(|c| cost != RequestCost::PullSparingReserve || !c.health().in_reserve()),
        );
        AttemptPlan::new(order, self.settings.retry_budget)
    }

    /// Whether an upstream in rotation is within its rate-limit reserve now.
    pub(crate) fn any_in_reserve(&self) -> bool {
        self.clients
            .iter()
            .any(|c| !c.health().is_drained() && c.health().in_reserve())
    }

    /// Remembers that `upstream` served wrong or broken bytes for `digest` (and so is
    /// suspect for every digest a while).
    pub(crate) fn mark_bad_source(&self, upstream: &str, digest: &Digest) {
        self.mark_suspect(upstream);
        let now = Instant::now();
        let mut bad = self.lock_bad_sources();
        bad.retain(|_, until| *until > now);
        if bad.len() >= MAX_BAD_SOURCES
            && let Some(oldest) = bad
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| k.clone())
        {
            bad.remove(&oldest);
        }
        bad.insert(
            (upstream.to_owned(), digest.clone()),
            now + self.settings.bad_source_skip,
        );
    }

    /// Forgets that `upstream` sent bad bytes for `digest`: it has just served them right.
    pub(crate) fn clear_bad_source(&self, upstream: &str, digest: &Digest) {
        self.lock_bad_sources()
            .remove(&(upstream.to_owned(), digest.clone()));
    }

    /// `upstream` was blamed for wrong bytes that turned out to be another source's (the
    /// shared store's copy): neither a bad source for `digest` nor suspect.
    pub(crate) fn exonerate(&self, upstream: &str, digest: &Digest) {
        self.clear_bad_source(upstream, digest);
        let now = Instant::now();
        // Suspicion earned with another digest stands.
        let blamed_elsewhere = self
            .lock_bad_sources()
            .iter()
            .any(|((name, _), until)| name == upstream && *until > now);
        if !blamed_elsewhere && let Some(client) = self.find(upstream) {
            client.health().clear_suspect();
            if let Some(file) = &self.settings.suspects {
                file.set(upstream, None);
            }
        }
    }

    /// `upstream` sent wrong bytes: suspect for `bad_source_skip`, across restarts too.
    fn mark_suspect(&self, upstream: &str) {
        if let Some(client) = self.find(upstream) {
            client.health().mark_suspect(self.settings.bad_source_skip);
            if let Some(file) = &self.settings.suspects {
                file.set(upstream, Some(self.settings.bad_source_skip));
            }
        }
    }

    fn lock_bad_sources(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Digest), Instant>> {
        // A poisoned lock only means another thread panicked mid-update of a plain map;
        // the map is still usable.
        self.bad_sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an attempt's outcome in the upstream's health and logs failures.
    pub fn record<T>(
        &self,
        client: &UpstreamClient,
        outcome: &Result<T, UpstreamFailure>,
        latency: Duration,
    ) {
        self.record_with(
            client,
            outcome,
            latency,
            self.settings.failover_on_not_found,
        )
    }

    /// `record`, with `failover_on_not_found` saying whether a 404 moves to the next upstream.
    fn record_with<T>(
        &self,
        client: &UpstreamClient,
        outcome: &Result<T, UpstreamFailure>,
        latency: Duration,
        failover_on_not_found: bool,
    ) {
        let outcome_label = match outcome {
            Ok(_) => "ok",
            Err(failure) => failure.reason(),
        };
        let own_overload = matches!(outcome, Err(f) if f.kind == super::FailureKind::MemoryBudget);
        if !own_overload {
            let failure = outcome.as_ref().err();
            self.metrics
                .history
                .note_attempt(crate::metrics::history::Attempt {
                    registry: &self.registry,
                    upstream: client.name(),
                    failure: failure.map(|f| (f.reason(), f.detail())),
                    // As the breaker sees it: a 404, 401 or 403 shows the upstream answering.
                    against_health: failure.is_some_and(|f| {
                        !matches!(
                            f.kind,
                            super::FailureKind::NotFound
                                | super::FailureKind::Unauthorized
                                | super::FailureKind::Forbidden
                        )
                    }),
                    moved_on: failure.is_some_and(|f| f.may_try_next(failover_on_not_found)),
                    latency,
                });
        }
        self.metrics
            .upstream_requests
            .get_or_create(&crate::metrics::UpstreamOutcomeLabels {
                registry: self.registry.clone(),
                upstream: client.name().to_owned(),
                outcome: outcome_label.to_owned(),
            })
            .inc();
        match outcome {
            Ok(_) => client.health().record_success(Some(latency)),
            Err(failure) if failure.kind == super::FailureKind::MemoryBudget => {
                // Ferry's own overload: the upstream answered, and is not blamed.
                tracing::warn!(upstream = %failure.upstream, detail = %failure.detail(), "body not read: ferry's memory budget is in use");
            }
            Err(failure) => {
                client.health().record_failure(failure);
                if failure.kind == super::FailureKind::DigestMismatch {
                    self.mark_suspect(client.name());
                }
                if failure.may_try_next(failover_on_not_found) {
                    self.metrics
                        .failovers
                        .get_or_create(&crate::metrics::FailoverLabels {
                            registry: self.registry.clone(),
                            upstream: client.name().to_owned(),
                            reason: failure.reason().to_owned(),
                        })
                        .inc();
                }
                tracing::warn!(
                    upstream = %failure.upstream,
                    reason = failure.reason(),
                    detail = %failure.detail(),
                    may_try_next = failure.may_try_next(failover_on_not_found),
                    "upstream attempt failed"
                );
            }
        }
    }

    /// Runs `attempt` on each upstream of a fresh plan until one succeeds.
    pub(crate) async fn first_success<T, F, Fut>(
        &self,
        route: Route<'_>,
        attempt: F,
    ) -> Result<T, UpstreamsExhausted>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamFailure>>,
    {
        self.first_success_where(
            route,
            RequestCost::Free,
            self.settings.failover_on_not_found,
            attempt,
        )
        .await
    }

    /// `first_success` for a request that costs `cost` at an upstream (a manifest GET is a
    /// pull on Docker Hub): see [`Upstreams::plan_costing`].
    pub(crate) async fn first_success_costing<T, F, Fut>(
        &self,
        route: Route<'_>,
        cost: RequestCost,
        attempt: F,
    ) -> Result<T, UpstreamsExhausted>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamFailure>>,
    {
        self.first_success_where(route, cost, self.settings.failover_on_not_found, attempt)
            .await
    }

    /// `first_success` for an API an upstream may lack (OCI 1.1's referrers): a 404 there
    /// means "not implemented here", so it always moves to the next upstream, whatever
    /// `failover_on_not_found` says.
    pub(crate) async fn first_success_past_missing_api<T, F, Fut>(
        &self,
        route: Route<'_>,
        attempt: F,
    ) -> Result<T, UpstreamsExhausted>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamFailure>>,
    {
        self.first_success_where(route, RequestCost::Free, true, attempt)
            .await
    }

    async fn first_success_where<T, F, Fut>(
        &self,
        route: Route<'_>,
        cost: RequestCost,
        failover_on_not_found: bool,
        attempt: F,
    ) -> Result<T, UpstreamsExhausted>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamFailure>>,
    {
        let mut plan = self.plan_costing(route, cost);
        let mut failures = Vec::new();
        match self
            .attempt_in_order(&mut plan, &mut failures, failover_on_not_found, attempt)
            .await
        {
            Some(value) => Ok(value),
            None => Err(plan.exhausted(failures, failover_on_not_found)),
        }
    }

    /// Runs `attempt` on the upstreams `plan` still allows until one succeeds, hedging if
    /// configured; failures are appended to `failures`. `None` when the plan is spent or a
    /// failure forbids trying further.
    pub(crate) async fn first_success_in<T, F, Fut>(
        &self,
        plan: &mut AttemptPlan,
        failures: &mut Vec<UpstreamFailure>,
        attempt: F,
    ) -> Option<T>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamFailure>>,
    {
        let failover_on_not_found = self.settings.failover_on_not_found;
        self.attempt_in_order(plan, failures, failover_on_not_found, attempt)
            .await
    }

    async fn attempt_in_order<T, F, Fut>(
        &self,
        plan: &mut AttemptPlan,
        failures: &mut Vec<UpstreamFailure>,
        failover_on_not_found: bool,
        mut attempt: F,
    ) -> Option<T>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamFailure>>,
    {
        let mut running = FuturesUnordered::new();
        let mut launch = |client: Arc<UpstreamClient>| {
            let attempt = attempt(client.clone());
            async move {
                let started = Instant::now();
                let outcome = attempt.await;
                (client, outcome, started.elapsed())
            }
        };
        // Attempts still waiting for an answer, with when they started, oldest first.
        let mut pending: Vec<(Arc<UpstreamClient>, Instant)> = Vec::new();
        let mut exhausted = false;
        // Set by an answer that forbids trying further (a 404 with not-found failover off):
        // nothing new starts, but attempts already running may still answer.
        let mut stopped = false;
        loop {
            if running.is_empty() {
                if stopped {
                    return None;
                }
                match plan.next_upstream() {
                    Some(client) => {
                        pending.push((client.clone(), Instant::now()));
                        running.push(launch(client));
                    }
                    None => return None,
                }
            }
            // The newest attempt sets the hedge: once it has been silent for its own delay,
            // the next upstream starts alongside it.
            let hedge =
                pending
                    .last()
                    .filter(|_| !exhausted && !stopped)
                    .and_then(|(client, started)| {
                        let delay = self.settings.hedging.delay_for(client)?;
                        Some((client.clone(), delay, started.checked_add(delay)?))
                    });
            let finished = match hedge {
                None => running.next().await,
                Some((slow, delay, deadline)) => {
                    tokio::select! {
                        finished = running.next() => finished,
                        () = tokio::time::sleep_until(deadline.into()) => {
                            match plan.next_upstream() {
                                Some(client) => {
                                    self.note_hedge(&slow, delay);
                                    pending.push((client.clone(), Instant::now()));
                                    running.push(launch(client));
                                }
                                None => exhausted = true,
                            }
                            continue;
                        }
                    }
                }
            };
            let Some((client, outcome, latency)) = finished else {
                continue;
            };
            if let Some(at) = pending.iter().position(|(p, _)| Arc::ptr_eq(p, &client)) {
                pending.remove(at);
            }
            self.record_with(&client, &outcome, latency, failover_on_not_found);
            match outcome {
                Ok(value) => {
                    self.note_outrun(&pending, failover_on_not_found);
                    return Some(value);
                }
                Err(failure) => {
                    if !failure.may_try_next(failover_on_not_found) {
                        stopped = true;
                    }
                    failures.push(failure);
                }
            }
        }
    }

    /// Attempts a hedge outran are dropped unanswered. What they showed still counts: the
    /// time one stayed silent is a lower bound of its time to answer (so a slow but healthy
    /// upstream's hedge delay grows until it stops losing), and one that answered nothing at
    /// all since it started (no other request either) counts as a header timeout, so a
    /// blackholed upstream's breaker opens after a few hedged requests.
    fn note_outrun(&self, pending: &[(Arc<UpstreamClient>, Instant)], failover_on_not_found: bool) {
        for (client, started) in pending {
            let silent = started.elapsed();
            let Some(delay) = self.settings.hedging.delay_for(client) else {
                continue;
            };
            if silent < delay {
                continue;
            }
            let answered_since = client.health().answered_since(*started);
            client.health().note_silence(silent);
            if answered_since {
                continue;
            }
            let failure = UpstreamFailure::new(
                client.name(),
                super::failure::FailureKind::HeaderTimeout,
                format!("silent for {silent:?}, outrun by a hedge"),
            );
            self.record_with(
                client,
                &Err::<(), _>(failure),
                silent,
                failover_on_not_found,
            );
        }
    }
}
