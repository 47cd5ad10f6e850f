//! In-process fan-out of dispatch changes to long-poll waiters and log followers.
//!
//! One Postgres `LISTEN` connection per gateway feeds this hub (see
//! [`crate::listener`]); each waiter subscribes to one dispatch id and is woken
//! only by changes to that id. A waiter costs one map entry and one
//! `watch::Receiver`: no connection, no task, no polling. A change made by
//! this replica carries the row it wrote, so its waiters answer without
//! reading it again; a hint from elsewhere carries nothing, and they re-read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use uuid::Uuid;

/// What a change can carry to its waiters: a newer value replaces an older one.
pub trait Payload: Clone + Send + Sync + 'static {
    /// True if `self` is at least as new as `other`.
    fn supersedes(&self, other: &Self) -> bool;
}

impl Payload for () {
    fn supersedes(&self, _: &Self) -> bool {
        true
    }
}

impl Payload for Arc<crate::db::DispatchRow> {
    fn supersedes(&self, other: &Self) -> bool {
        self.generation >= other.generation
    }
}

/// The hub. Cheap to clone.
pub struct Notifier<T: Payload = ()> {
    senders: Arc<Mutex<HashMap<Uuid, watch::Sender<Wake<T>>>>>,
}

/// The last wake-up of one dispatch: a counter, and what the newest change carried.
#[derive(Clone)]
struct Wake<T> {
    count: u64,
    latest: Option<T>,
}

impl<T: Payload> Clone for Notifier<T> {
    fn clone(&self) -> Self {
        Notifier { senders: self.senders.clone() }
    }
}

impl<T: Payload> Default for Notifier<T> {
    fn default() -> Self {
        Notifier { senders: Arc::default() }
    }
}

impl<T: Payload> Notifier<T> {
    /// Starts watching `id`. Subscribe *before* reading the row, so no change
    /// between the read and the wait is missed.
    pub fn subscribe(&self, id: Uuid) -> Subscription<T> {
        let mut senders = self.senders.lock().expect("notifier lock poisoned");
        let receiver =
            senders.entry(id).or_insert_with(|| watch::channel(Wake { count: 0, latest: None }).0).subscribe();
        Subscription { id, receiver, notifier: self.clone() }
    }

    /// Wakes the waiters of `id`, if any, handing them `value` unless they
    /// already hold a newer one.
    pub fn notify(&self, id: Uuid, value: Option<T>) {
        self.notify_with(id, || value)
    }

    /// [`Notifier::notify`], building the value only if someone waits.
    pub fn notify_with(&self, id: Uuid, value: impl FnOnce() -> Option<T>) {
        let senders = self.senders.lock().expect("notifier lock poisoned");
        if let Some(sender) = senders.get(&id) {
            let value = value();
            sender.send_modify(|wake| {
                wake.count += 1;
                match (&value, &wake.latest) {
                    (Some(new), Some(old)) if !new.supersedes(old) => {}
                    _ => wake.latest = value,
                }
            });
        }
    }

    /// Wakes every waiter, e.g. after the notification stream reconnected and
    /// changes may have been missed. Each re-reads its dispatch.
    pub fn notify_all(&self) {
        let senders = self.senders.lock().expect("notifier lock poisoned");
        for sender in senders.values() {
            sender.send_modify(|wake| {
                wake.count += 1;
                wake.latest = None;
            });
        }
    }

    /// How many dispatch ids have waiters.
    pub fn watched(&self) -> usize {
        self.senders.lock().expect("notifier lock poisoned").len()
    }
}

/// A waiter's interest in one dispatch; unsubscribes on drop.
pub struct Subscription<T: Payload = ()> {
    id: Uuid,
    receiver: watch::Receiver<Wake<T>>,
    notifier: Notifier<T>,
}

impl<T: Payload> Subscription<T> {
    /// Resolves at the next change after the subscription (or the last
    /// `changed`), with what the newest change carried (`None`: re-read).
    pub async fn changed(&mut self) -> Option<T> {
        // The sender lives in the map while any subscription does, so this cannot fail.
        let _ = self.receiver.changed().await;
        self.receiver.borrow_and_update().latest.clone()
    }
}

impl<T: Payload> Drop for Subscription<T> {
    fn drop(&mut self) {
        let mut senders = self.notifier.senders.lock().expect("notifier lock poisoned");
        // Our own receiver still counts until this function returns.
        if senders.get(&self.id).is_some_and(|s| s.receiver_count() <= 1) {
            senders.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notification_wakes_only_the_waiters_of_that_dispatch() {
        let hub = Notifier::<()>::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut wait_a = hub.subscribe(a);
        let mut wait_b = hub.subscribe(b);
        hub.notify(a, None);
        tokio::time::timeout(Duration::from_secs(1), wait_a.changed()).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(20), wait_b.changed()).await.is_err());
    }

    #[test]
    fn a_replica_skips_its_own_hints() {
        let (ours, _) = Publisher::new();
        let (theirs, _) = Publisher::new();
        let id = Uuid::new_v4();
        assert_eq!(ours.foreign_hint(&format!("{}:{id}", ours.replica())), None);
        assert_eq!(ours.foreign_hint(&format!("{}:{id}", theirs.replica())), Some(id));
        assert_eq!(ours.foreign_hint("garbage"), None);
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Versioned(u32);

    impl Payload for Versioned {
        fn supersedes(&self, other: &Self) -> bool {
            self.0 >= other.0
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_newest_value_even_when_an_older_one_arrives_last() {
        let hub = Notifier::<Versioned>::default();
        let id = Uuid::new_v4();
        let mut waiter = hub.subscribe(id);
        hub.notify(id, Some(Versioned(4)));
        hub.notify(id, Some(Versioned(3)));
        assert_eq!(waiter.changed().await, Some(Versioned(4)));
        hub.notify_all();
        assert_eq!(waiter.changed().await, None, "a wake from a reconnect carries nothing: re-read");
    }

    #[test]
    fn a_relay_is_for_the_replica_it_names_and_a_hint_for_every_other() {
        let (publisher, mut queue) = Publisher::new();
        let (other, id) = (Uuid::new_v4(), Uuid::new_v4());
        publisher.relay(Channel::RelayCall, other, id);
        let (channel, payload) = queue.try_recv().unwrap();
        assert_eq!(channel, Channel::RelayCall);
        assert_eq!(publisher.relay_for_me(&payload), None, "a relay for another replica");
        assert_eq!(publisher.relay_for_me(&format!("{}:{id}", publisher.replica())), Some(id));
        assert_eq!(publisher.relay_for_me("not a relay"), None);
        publisher.publish(Channel::DispatchState, id);
        let (_, hint) = queue.try_recv().unwrap();
        assert_eq!(publisher.foreign_hint(&hint), None, "its own hint");
        assert_eq!(publisher.foreign_hint(&format!("{other}:{id}")), Some(id));
        for channel in Channel::ALL {
            assert_eq!(Channel::named(channel.name()), Some(channel));
        }
    }

    #[tokio::test]
    async fn the_last_subscription_dropped_removes_the_entry() {
        let hub = Notifier::<()>::default();
        let id = Uuid::new_v4();
        let first = hub.subscribe(id);
        let second = hub.subscribe(id);
        drop(first);
        assert_eq!(hub.watched(), 1);
        drop(second);
        assert_eq!(hub.watched(), 0);
    }
}

/// Which kind of change a hint is about, or which relay a message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A dispatch changed state.
    DispatchState,
    /// A dispatch got new output.
    DispatchLog,
    /// A call was placed on a node whose link the named replica holds: it
    /// should send the call over that link.
    RelayCall,
    /// A cancel for a call on a node whose link the named replica holds.
    RelayCancel,
}

impl Channel {
    /// Every channel a replica listens on.
    pub const ALL: [Channel; 4] =
        [Channel::DispatchState, Channel::DispatchLog, Channel::RelayCall, Channel::RelayCancel];

    /// The Postgres channel name.
    pub fn name(self) -> &'static str {
        match self {
            Channel::DispatchState => "dispatch_state",
            Channel::DispatchLog => "dispatch_log",
            Channel::RelayCall => "relay_call",
            Channel::RelayCancel => "relay_cancel",
        }
    }

    /// The channel called `name`.
    pub fn named(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Sends change hints to the other gateway replicas (through Postgres
/// `NOTIFY`), after the change has committed, batched by one background task.
/// Local waiters are woken directly and do not wait for this.
///
/// Each hint's payload is `<replica>:<dispatch id>`, so a replica can skip its
/// own hints: it has already woken its waiters. A relay's payload names the
/// replica it is for instead: `<link holder>:<dispatch id>`.
#[derive(Clone)]
pub struct Publisher {
    replica: Uuid,
    sender: tokio::sync::mpsc::UnboundedSender<(Channel, String)>,
    /// Whether other replicas listen. A `NOTIFY` costs a commit (a disk
    /// flush) under a database-wide lock, so a lone replica sends none.
    peers: Arc<AtomicBool>,
}

impl Publisher {
    /// A publisher for a new replica id, and the receiving end its task drains.
    /// Until told otherwise it assumes other replicas listen.
    pub fn new() -> (Publisher, tokio::sync::mpsc::UnboundedReceiver<(Channel, String)>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (Publisher { replica: Uuid::new_v4(), sender, peers: Arc::new(AtomicBool::new(true)) }, receiver)
    }

    /// Records whether other replicas listen (see [`crate::listener`]).
    pub fn set_peers(&self, present: bool) {
        self.peers.store(present, Ordering::Relaxed);
    }

    /// True if hints are being sent to other replicas.
    pub fn has_peers(&self) -> bool {
        self.peers.load(Ordering::Relaxed)
    }

    /// The dispatch id a hint is about, unless this replica sent it.
    pub fn foreign_hint(&self, payload: &str) -> Option<Uuid> {
        let (replica, id) = payload.split_once(':')?;
        (replica.parse::<Uuid>().ok()? != self.replica).then(|| id.parse().ok()).flatten()
    }

    /// This replica's id.
    pub fn replica(&self) -> Uuid {
        self.replica
    }

    /// Queues a hint for the other replicas, if there are any; never blocks.
    pub fn publish(&self, channel: Channel, id: Uuid) {
        if self.has_peers() {
            let _ = self.sender.send((channel, format!("{}:{id}", self.replica)));
        }
    }

    /// Queues a relay (`Channel::RelayCall` or `RelayCancel`) of dispatch
    /// `id` for replica `holder`, the one holding its node's link; never blocks.
    pub fn relay(&self, channel: Channel, holder: Uuid, id: Uuid) {
        let _ = self.sender.send((channel, format!("{holder}:{id}")));
    }

    /// The dispatch id a relay is about, if it is for this replica.
    pub fn relay_for_me(&self, payload: &str) -> Option<Uuid> {
        let (replica, id) = payload.split_once(':')?;
        (replica.parse::<Uuid>().ok()? == self.replica).then(|| id.parse().ok()).flatten()
    }
}

/// Drains queued hints and relays and publishes each batch with one statement per channel.
pub async fn run_publisher(
    db: crate::db::DataStore,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<(Channel, String)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = receiver.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let mut batch: HashMap<Channel, Vec<String>> = HashMap::new();
        batch.entry(first.0).or_default().push(first.1);
        while let Ok((channel, payload)) = receiver.try_recv() {
            let payloads = batch.entry(channel).or_default();
            payloads.push(payload);
            if payloads.len() >= 1000 {
                break;
            }
        }
        for (channel, mut payloads) in batch {
            payloads.sort();
            payloads.dedup();
            if let Err(err) = db.notify_many(channel.name(), &payloads).await {
                // Other replicas' waiters re-read on their next wake or
                // timeout; a call whose relay is lost never reaches its node,
                // which never lists it, so the heartbeat repair requeues it;
                // the cancel repair re-sends a lost cancel.
                tracing::warn!(error = %err, channel = channel.name(), "cannot publish hints or relays");
            }
        }
    }
}
