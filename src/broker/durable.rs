//! What makes the embedded broker keep its acknowledgements: rmqtt's retained-message store
//! and routing wrapped so that a PUBACK waits for the [`Journal`], the in-flight window
//! redelivered in order, and dropped messages counted.
//!
//! - [`DurableRetain`]: a retained PUBLISH is written to the journal before rmqtt's in-memory
//!   retainer takes it, and rmqtt sends the PUBACK only after `set` returns.
//! - [`DurableShared`]: routing a QoS 1/2 PUBLISH first journals one row per persistent
//!   (clean-session 0) subscriber that gets it at QoS 1/2, waits for the commit, then hands the
//!   message to rmqtt; rmqtt's PUBACK to the publisher follows the routing. A subscriber's
//!   PUBACK (or a drop) deletes its row. After a restart the rows are delivered, oldest first,
//!   when the session's client connects again; until then new messages for it are only
//!   journaled, so the order holds. rmqtt-session-storage still keeps sessions and their
//!   subscriptions, but its own (background) copy of queued and in-flight messages is turned
//!   off: the journal is the one copy.
//! - [`OrderedEntry`]: rmqtt hands a resumed session's in-flight messages over as a `Vec` and
//!   redelivers them with `pop()`, newest first (rmqtt 0.24 `transfer_session_state`); the
//!   entry reverses the `Vec` so they go out in their original order (MQTT 3.1.1 §4.6).
//!
//! When the journal cannot write, `set` and routing never return: no PUBACK goes out, and the
//! gateway stops on [`Journal::failed`].
//! Owns: the wrappers around rmqtt's retainer, routing and session entry. Must never: let a
//! PUBACK go out before the journal has committed, or redeliver out of order.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::retain::{RetainStorage, RetainSyncMode};
use rmqtt::session::Session;
use rmqtt::shared::{Entry, MessageLoadCallback, RetainLoadCallback, Shared};
use rmqtt::types::{
    ClientId, ForwardedCount, ForwardedRecipients, From, Id, IsAdmin, MsgID, NodeId,
    OfflineSession, Publish, QoS, Retain, SessionStatus, SharedGroup, SubRelations,
    SubRelationsMap, SubsSearchParams, SubsSearchResult, Subscribe, SubscribeReturn, To,
    TopicFilter, TopicName, Tx, Unsubscribe,
};
use rmqtt::utils::{timestamp_millis, StatsMergeMode};
use tracing::{error, warn};

use super::journal::{message_key, Journal, Queued};

/// Waits forever: used once the journal has failed, so that no PUBACK is sent for a message
/// that is not on disk. The gateway stops on [`Journal::failed`] meanwhile.
async fn never() -> ! {
    std::future::pending::<()>().await;
    unreachable!("pending never resolves")
}

/// Counts messages the broker dropped (a session's queue full) and logs them at warn, at most
/// once per [`DROP_LOG_EVERY`].
pub struct Drops {
    count: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

/// Least time between two warnings about dropped messages.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

impl Drops {
    pub fn new() -> Arc<Drops> {
        Arc::new(Drops {
            count: AtomicU64::new(0),
            logged: Mutex::new(None),
        })
    }

    /// Messages dropped so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64, client_id: &str) {
        let total = self.count.fetch_add(n, Ordering::Relaxed) + n;
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
            *logged = Some(Instant::now());
            warn!(
                client_id,
                dropped_total = total,
                "embedded broker dropped QoS 1/2 messages: a persistent session's queue is full \
                 (raise broker.embedded.max_queued_messages)"
            );
        }
    }
}

/// The retainer, with each retained message journaled before it is taken.
pub struct DurableRetain {
    pub inner: Box<dyn RetainStorage>,
    pub journal: Journal,
}

impl DurableRetain {
    /// Gives the retainer every retained message the journal holds (expired ones are skipped).
    pub async fn restore(&self, rows: Vec<super::journal::RetainedRow>) -> rmqtt::Result<usize> {
        let now = timestamp_millis();
        let mut restored = 0;
        for row in rows {
            let expiry = match row.expires_at {
                Some(at) if at <= now => continue,
                Some(at) => Some(Duration::from_millis(u64::try_from(at - now).unwrap_or(0))),
                None => None,
            };
            let retain: Retain = match serde_json::from_slice(&row.record) {
                Ok(r) => r,
                Err(e) => {
                    warn!(topic = %row.topic, error = %e, "unreadable retained message in the broker journal; skipped");
                    continue;
                }
            };
            self.inner
                .set(&TopicName::from(row.topic.as_str()), retain, expiry)
                .await?;
            restored += 1;
        }
        Ok(restored)
    }
}

#[async_trait::async_trait]
impl RetainStorage for DurableRetain {
    fn enable(&self) -> bool {
        self.inner.enable()
    }

    fn merge_on_read(&self) -> bool {
        self.inner.merge_on_read()
    }

    fn need_sync(&self) -> bool {
        self.inner.need_sync()
    }

    async fn set(
        &self,
        topic: &TopicName,
        retain: Retain,
        expiry_interval: Option<Duration>,
    ) -> rmqtt::Result<()> {
        // An empty payload deletes the retained message.
        let record = if retain.publish.payload.is_empty() {
            None
        } else {
            Some(serde_json::to_vec(&retain)?)
        };
        let expires_at = expiry_interval.map(|d| {
            timestamp_millis().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        });
        if let Err(e) = self
            .journal
            .retain(topic.to_string(), expires_at, record)
            .await
        {
            error!(error = %e, topic = %topic, "retained message not stored; no PUBACK");
            never().await;
        }
        self.inner.set(topic, retain, expiry_interval).await
    }

    async fn get(&self, topic_filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.inner.get(topic_filter).await
    }

    async fn get_all_paginated(
        &self,
        offset: usize,
        limit: usize,
    ) -> rmqtt::Result<(Vec<(TopicName, Retain, Option<Duration>)>, bool)> {
        self.inner.get_all_paginated(offset, limit).await
    }

    async fn count(&self) -> isize {
        self.inner.count().await
    }

    async fn max(&self) -> isize {
        self.inner.max().await
    }

    fn stats_merge_mode(&self) -> StatsMergeMode {
        self.inner.stats_merge_mode()
    }

    fn retain_sync_mode(&self) -> RetainSyncMode {
        self.inner.retain_sync_mode()
    }

    async fn sync_retain_topic(
        &self,
        topic: &TopicName,
        expiry_interval: Option<Duration>,
        is_set: bool,
    ) -> rmqtt::Result<()> {
        self.inner
            .sync_retain_topic(topic, expiry_interval, is_set)
            .await
    }
}

/// State shared by [`DurableShared`] and [`Durability`].
pub struct Owed {
    pub journal: Journal,
    pub drops: Arc<Drops>,
    /// ClientIds the journal owes messages from before this start, not yet connected again.
    pending: tokio::sync::Mutex<HashSet<String>>,
    /// Whether `pending` may be non-empty (so routing skips the lock once all are back).
    any_pending: AtomicBool,
}

impl Owed {
    pub fn new(journal: Journal, drops: Arc<Drops>, pending: Vec<String>) -> Arc<Owed> {
        Arc::new(Owed {
            journal,
            drops,
            any_pending: AtomicBool::new(!pending.is_empty()),
            pending: tokio::sync::Mutex::new(pending.into_iter().collect()),
        })
    }
}

/// rmqtt's session table and router, with QoS 1/2 messages for persistent sessions journaled
/// before they are routed.
pub struct DurableShared {
    pub inner: Box<dyn Shared>,
    pub scx: ServerContext,
    pub owed: Arc<Owed>,
}

/// The message as rmqtt hands it to a subscriber (`forwards_to`): no DUP, no RETAIN (MQTT
/// 3.1.1 §3.3.1.3 for a message that is not sent because of a new subscription), the
/// subscription's QoS if lower, no packet identifier yet.
fn as_delivered(publish: &Publish, qos: QoS) -> Publish {
    let mut p = publish.clone();
    p.dup = false;
    p.retain = false;
    p.qos = qos;
    p.packet_id = None;
    p
}

impl DurableShared {
    /// Whether `client_id` holds a persistent (clean-session 0) session here.
    async fn persistent(&self, client_id: &ClientId) -> bool {
        let id = Id::new(self.scx.node.id(), 0, None, None, client_id.clone(), None);
        match self.inner.entry(id).session() {
            Some(s) => s.connect_info().await.is_ok_and(|c| !c.clean_start()),
            None => false,
        }
    }
}

#[async_trait::async_trait]
impl Shared for DurableShared {
    fn entry(&self, id: Id) -> Box<dyn Entry> {
        Box::new(OrderedEntry(self.inner.entry(id)))
    }

    fn exist(&self, client_id: &str) -> bool {
        self.inner.exist(client_id)
    }

    async fn forwards(
        &self,
        msg_id: Option<MsgID>,
        from: From,
        publish: Publish,
    ) -> Result<
        ForwardedCount,
        (
            ForwardedCount,
            Vec<(To, From, Publish, rmqtt::types::Reason)>,
        ),
    > {
        if publish.target_clientid.is_some() || publish.qos == QoS::AtMostOnce {
            return self.inner.forwards(msg_id, from, publish).await;
        }
        let this_node = self.scx.node.id();
        let relations = match self
            .scx
            .extends
            .router()
            .await
            .matches(from.id.clone(), &publish.topic)
            .await
        {
            Ok(mut map) => map.remove(&this_node).unwrap_or_default(),
            Err(e) => {
                warn!(topic = %publish.topic, error = %e, "embedded broker: routing failed");
                SubRelations::new()
            }
        };
        let key = message_key(&publish.topic, &publish.payload);
        let pending = if self.owed.any_pending.load(Ordering::Acquire) {
            Some(self.owed.pending.lock().await)
        } else {
            None
        };
        let mut rows = Vec::new();
        // Per row: whether it goes to the journal only (its client is pending).
        let mut journal_only = Vec::new();
        let mut routed = SubRelations::with_capacity(relations.len());
        for relation in relations {
            let (_, client_id, opts, _, _) = &relation;
            let qos = publish.qos.less_value(opts.qos());
            if qos != QoS::AtMostOnce && self.persistent(client_id).await {
                let record = match serde_json::to_vec(&(&from, as_delivered(&publish, qos))) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %e, "embedded broker: cannot encode a message for the journal");
                        routed.push(relation);
                        continue;
                    }
                };
                rows.push(Queued {
                    client_id: client_id.to_string(),
                    key,
                    record,
                });
                // Owed messages from before the restart go out first, when it connects.
                let only = pending.as_ref().is_some_and(|p| p.contains(&**client_id));
                journal_only.push(only);
                if only {
                    continue;
                }
            }
            routed.push(relation);
        }
        let clients: Vec<String> = rows.iter().map(|r| r.client_id.clone()).collect();
        let committed = self.owed.journal.queue(rows).await;
        drop(pending);
        match committed.await {
            Ok(evicted) => {
                // For a routed message rmqtt's own queue cap drops (and counts) the oldest;
                // for a journal-only one the journal did.
                for i in evicted {
                    if journal_only.get(i).copied().unwrap_or(false) {
                        self.owed.drops.add(1, &clients[i]);
                    }
                }
            }
            Err(e) => {
                error!(error = %e, topic = %publish.topic, "message not stored; no PUBACK");
                never().await;
            }
        }
        if routed.is_empty() {
            return Ok(0);
        }
        self.inner
            .forwards_to(from, &publish, routed, msg_id)
            .await
            .map(|r| r.len())
            .map_err(|(r, errs)| (r.len(), errs))
    }

    async fn forwards_and_get_shareds(
        &self,
        from: From,
        publish: Publish,
    ) -> Result<
        (SubRelationsMap, ForwardedRecipients),
        (
            ForwardedRecipients,
            Vec<(To, From, Publish, rmqtt::types::Reason)>,
        ),
    > {
        self.inner.forwards_and_get_shareds(from, publish).await
    }

    async fn forwards_to(
        &self,
        from: From,
        publish: &Publish,
        relations: SubRelations,
        msg_id: Option<MsgID>,
    ) -> Result<
        ForwardedRecipients,
        (
            ForwardedRecipients,
            Vec<(To, From, Publish, rmqtt::types::Reason)>,
        ),
    > {
        self.inner
            .forwards_to(from, publish, relations, msg_id)
            .await
    }

    fn iter(&self) -> Box<dyn Iterator<Item = Box<dyn Entry>> + Sync + Send + '_> {
        self.inner.iter()
    }

    fn random_session(&self) -> Option<Session> {
        self.inner.random_session()
    }

    async fn session_status(&self, client_id: &str) -> Option<SessionStatus> {
        self.inner.session_status(client_id).await
    }

    async fn client_states_count(&self) -> usize {
        self.inner.client_states_count().await
    }

    fn sessions_count(&self) -> usize {
        self.inner.sessions_count()
    }

    async fn query_subscriptions(&self, q: &SubsSearchParams) -> Vec<SubsSearchResult> {
        self.inner.query_subscriptions(q).await
    }

    async fn subscriptions_count(&self) -> usize {
        self.inner.subscriptions_count().await
    }

    async fn message_load(
        &self,
        client_id: &str,
        topic_filter: &str,
        group: Option<&SharedGroup>,
    ) -> rmqtt::Result<Vec<(MsgID, From, Publish)>> {
        self.inner
            .message_load(client_id, topic_filter, group)
            .await
    }

    async fn message_load_with(
        &self,
        client_id: &str,
        topic_filter: &str,
        group: Option<&SharedGroup>,
        cb: Arc<dyn MessageLoadCallback>,
    ) -> rmqtt::Result<()> {
        self.inner
            .message_load_with(client_id, topic_filter, group, cb)
            .await
    }

    async fn retain_load_with(
        &self,
        topic_filter: &TopicFilter,
        cb: Arc<dyn RetainLoadCallback>,
    ) -> rmqtt::Result<Vec<(NodeId, MsgID)>> {
        self.inner.retain_load_with(topic_filter, cb).await
    }

    async fn retain_set_broadcast(
        &self,
        topic: &TopicName,
        retain: &Retain,
        expiry_interval: Option<Duration>,
    ) -> rmqtt::Result<()> {
        self.inner
            .retain_set_broadcast(topic, retain, expiry_interval)
            .await
    }

    async fn message_mark_forwarded(
        &self,
        from_node_id: NodeId,
        msg_id: MsgID,
        recipients: ForwardedRecipients,
    ) -> rmqtt::Result<()> {
        self.inner
            .message_mark_forwarded(from_node_id, msg_id, recipients)
            .await
    }
}

/// A session-table entry whose takeover hands the in-flight messages over oldest-last, so
/// that rmqtt's `pop()` redelivers them oldest first.
pub struct OrderedEntry(Box<dyn Entry>);

#[async_trait::async_trait]
impl Entry for OrderedEntry {
    async fn try_lock(&self) -> rmqtt::Result<Box<dyn Entry>> {
        Ok(Box::new(OrderedEntry(self.0.try_lock().await?)))
    }

    fn id(&self) -> Id {
        self.0.id()
    }

    fn id_same(&self) -> Option<bool> {
        self.0.id_same()
    }

    async fn set(&mut self, session: Session, tx: Tx) -> rmqtt::Result<()> {
        self.0.set(session, tx).await
    }

    async fn remove(&mut self) -> rmqtt::Result<Option<(Session, Tx)>> {
        self.0.remove().await
    }

    async fn remove_with(&mut self, id: &Id) -> rmqtt::Result<Option<(Session, Tx)>> {
        self.0.remove_with(id).await
    }

    async fn kick(
        &mut self,
        clean_start: bool,
        clear_subscriptions: bool,
        is_admin: IsAdmin,
    ) -> rmqtt::Result<OfflineSession> {
        let mut offline = self
            .0
            .kick(clean_start, clear_subscriptions, is_admin)
            .await?;
        if let OfflineSession::Exist(Some(info)) = &mut offline {
            info.inflight_messages.reverse();
        }
        Ok(offline)
    }

    async fn online(&self) -> bool {
        self.0.online().await
    }

    async fn is_connected(&self) -> bool {
        self.0.is_connected().await
    }

    fn session(&self) -> Option<Session> {
        self.0.session()
    }

    fn exist(&self) -> bool {
        self.0.exist()
    }

    fn tx(&self) -> Option<Tx> {
        self.0.tx()
    }

    async fn subscribe(&self, subscribe: &Subscribe) -> rmqtt::Result<SubscribeReturn> {
        self.0.subscribe(subscribe).await
    }

    async fn unsubscribe(&self, unsubscribe: &Unsubscribe) -> rmqtt::Result<bool> {
        self.0.unsubscribe(unsubscribe).await
    }

    async fn publish(
        &self,
        from: From,
        p: Publish,
    ) -> Result<(), (From, Publish, rmqtt::types::Reason)> {
        self.0.publish(from, p).await
    }

    async fn subscriptions(&self) -> Option<Vec<SubsSearchResult>> {
        self.0.subscriptions().await
    }
}

/// The hooks that keep the journal in step with the broker.
pub struct Durability {
    pub scx: ServerContext,
    pub owed: Arc<Owed>,
}

impl Durability {
    /// `session` expired: if it was persistent, the journal owes it nothing any more.
    async fn expired(&self, session: &Session) {
        if session.connect_info().await.is_ok_and(|c| !c.clean_start()) {
            let client_id = session.id.client_id.to_string();
            self.owed.pending.lock().await.remove(&client_id);
            self.owed.journal.forget(client_id).await;
        }
    }

    /// `session`'s client acknowledged `p`: a persistent session's journal row goes.
    async fn acked(&self, session: &Session, p: &Publish) {
        if session.connect_info().await.is_ok_and(|c| !c.clean_start()) {
            let key = message_key(&p.topic, &p.payload);
            self.owed
                .journal
                .ack(session.id.client_id.to_string(), key)
                .await;
        }
    }

    /// Delivers what the journal owes `session`'s client from before this start, oldest first.
    async fn restore(&self, session: &Session) {
        let client_id = session.id.client_id.to_string();
        let mut pending = self.owed.pending.lock().await;
        if !pending.remove(&client_id) {
            return;
        }
        if pending.is_empty() {
            self.owed.any_pending.store(false, Ordering::Release);
        }
        // Loaded while `pending` is held: every row routing journals for this client before
        // is included, and every later message is routed to the session.
        let rows = match self.owed.journal.load(client_id.clone()).await {
            Ok(rows) => rows,
            Err(e) => {
                error!(error = %e, "cannot read the broker journal");
                return;
            }
        };
        let entry = self.scx.extends.shared().await.entry(session.id.clone());
        for row in rows {
            match serde_json::from_slice::<(From, Publish)>(&row.record) {
                Ok((from, p)) => {
                    if entry.publish(from, p).await.is_err() {
                        warn!(
                            client_id,
                            "session gone while its journaled messages were delivered"
                        );
                        break;
                    }
                }
                Err(e) => {
                    warn!(client_id, error = %e, "unreadable message in the broker journal; skipped")
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for Durability {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            // The journal holds these: stop rmqtt-session-storage from keeping a second copy
            // (restored next to the journal's, it would deliver each message twice).
            Parameter::OfflineMessage(..) | Parameter::OfflineInflightMessages(..) => {
                return (false, acc);
            }
            Parameter::MessageAcked(session, _, p) => self.acked(session, p).await,
            Parameter::MessageDropped(Some(to), _, p, reason) => {
                let client_id = to.client_id.to_string();
                if matches!(reason, rmqtt::types::Reason::MessageQueueFull) {
                    self.owed.drops.add(1, &client_id);
                }
                if p.qos != QoS::AtMostOnce {
                    let key = message_key(&p.topic, &p.payload);
                    self.owed.journal.ack(client_id, key).await;
                }
            }
            // A persistent session that expired (7 days away): nothing is owed any more. (Its
            // queued messages were also dropped one by one, which deleted their rows.)
            Parameter::SessionTerminated(session, rmqtt::types::Reason::SessionExpiration) => {
                self.expired(session).await
            }
            Parameter::ClientConnected(session) => {
                let clean = session.connect_info().await.is_ok_and(|c| c.clean_start());
                if clean {
                    // MQTT 3.1.1 §3.1.2.4: a clean session discards the previous one.
                    let client_id = session.id.client_id.to_string();
                    self.owed.pending.lock().await.remove(&client_id);
                    self.owed.journal.forget(client_id).await;
                } else {
                    self.restore(session).await;
                }
            }
            _ => {}
        }
        (true, acc)
    }
}
