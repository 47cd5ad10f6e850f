//! Group commit: creates, state changes and heartbeats that arrive while
//! earlier ones are being written are written together.
//!
//! A write that finds no other waiting is written at once, alone, by the
//! statement it would use anyway (one commit, no added wait). Writes that
//! arrive while the writers are busy queue up, and the next free writer takes
//! all of them (up to [`MAX_GROUP`]) into one commit. Each caller is still
//! answered only after the commit that holds its write. Nothing waits on a
//! timer: a group is whatever queued while the writers were busy.
//!
//! - Creates: a lone create is inserted and placed on a free slot by one
//!   statement; a group is inserted by one multi-row statement that places
//!   as many as there are free slots, in order, the same way. Those it
//!   cannot place are `queued`, for the placement task (also many per
//!   statement).
//! - State changes (reports, cancels, requeues): a group is applied in one
//!   transaction, by one multi-row compare-and-set statement per run of
//!   changes to distinct dispatches.
//! - Heartbeats' times: one multi-row statement for whatever is queued
//!   ([`Trailing`]); no caller waits for them.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use crate::db::{DataStore, DispatchRow, NewDispatch, NodeEndpoint, Transition};
use crate::Result;

/// Most writes in one commit.
const MAX_GROUP: usize = 64;
/// Writers working at once (each holds one database connection while writing).
const WRITERS: usize = 4;
/// Most trailing facts (heartbeats) written by one statement.
const MAX_TRAILING: usize = 512;

/// One kind of write that can be grouped.
pub trait GroupWrite: Clone + Send + Sync + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;
    /// Writes `item` alone, with no other waiting.
    fn one(&self, item: Self::Item) -> impl Future<Output = Result<Self::Output>> + Send;
    /// Writes `items` in one commit: one result per item, in order. An item
    /// the database refuses must fail alone, with its own error.
    fn many(&self, items: Vec<Self::Item>) -> impl Future<Output = Vec<Result<Self::Output>>> + Send;
}

type Waiting<W> = (<W as GroupWrite>::Item, oneshot::Sender<Result<<W as GroupWrite>::Output>>);

/// The queue of writes of one kind waiting for a writer.
pub struct Groups<W: GroupWrite> {
    queue: mpsc::UnboundedSender<Waiting<W>>,
}

impl<W: GroupWrite> Clone for Groups<W> {
    fn clone(&self) -> Self {
        Groups { queue: self.queue.clone() }
    }
}

impl<W: GroupWrite> Groups<W> {
    /// Starts the writers.
    pub fn start(write: W) -> Groups<W> {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..WRITERS {
            tokio::spawn(writer(write.clone(), waiting.clone()));
        }
        Groups { queue }
    }

    /// Writes `item`, alone or with whatever else is waiting; answers after its commit.
    pub async fn write(&self, item: W::Item) -> Result<W::Output> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((item, reply))
            .map_err(|_| crate::Error::Internal(anyhow::anyhow!("the group writers have stopped")))?;
        answer.await.map_err(|_| crate::Error::Internal(anyhow::anyhow!("a group writer stopped mid-write")))?
    }
}

/// One writer: takes the first waiting write and every other one queued
/// behind it, and writes them.
async fn writer<W: GroupWrite>(write: W, waiting: Arc<Mutex<mpsc::UnboundedReceiver<Waiting<W>>>>) {
    loop {
        let mut group = Vec::new();
        if waiting.lock().await.recv_many(&mut group, MAX_GROUP).await == 0 {
            return;
        }
        if group.len() == 1 {
            let (item, reply) = group.pop().expect("one item");
            let _ = reply.send(write.one(item).await);
            continue;
        }
        let (items, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        for (reply, result) in replies.into_iter().zip(write.many(items).await) {
            let _ = reply.send(result);
        }
    }
}

/// A create's outcome: its row and, if placed in the same commit, its node;
/// `None` when the project already has a dispatch with its idempotency key.
pub type Inserted = Option<(DispatchRow, Option<NodeEndpoint>)>;

/// Creates.
#[derive(Clone)]
pub struct Creates(pub DataStore);

impl GroupWrite for Creates {
    type Item = NewDispatch;
    type Output = Inserted;

    async fn one(&self, new: NewDispatch) -> Result<Inserted> {
        self.0.dispatch_insert_and_place(&new).await
    }

    async fn many(&self, news: Vec<NewDispatch>) -> Vec<Result<Inserted>> {
        let news: Vec<&NewDispatch> = news.iter().collect();
        self.0.dispatch_insert_group(&news).await
    }
}

/// State changes: `None` when the change wrote nothing (see
/// [`DataStore::dispatch_transition`]).
#[derive(Clone)]
pub struct Transitions(pub DataStore);

impl GroupWrite for Transitions {
    type Item = Transition;
    type Output = Option<DispatchRow>;

    async fn one(&self, change: Transition) -> Result<Option<DispatchRow>> {
        self.0.dispatch_transition(&change).await
    }

    async fn many(&self, changes: Vec<Transition>) -> Vec<Result<Option<DispatchRow>>> {
        self.0.dispatch_transition_group(&changes).await
    }
}

/// Facts written in the background, each write taking everything queued by
/// then: heartbeats' times. Losing some to a crash costs only what the
/// node's next heartbeat restores (see [`DataStore::node_heartbeats_record`]),
/// so no request waits for them, and a burst of them is one statement.
#[derive(Clone)]
pub struct Trailing<T> {
    queue: mpsc::UnboundedSender<T>,
}

impl<T: Send + 'static> Trailing<T> {
    /// Starts the writer: `write` records a batch of what was queued.
    pub fn start<F, Fut>(what: &'static str, write: F) -> Trailing<T>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel::<T>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while waiting.recv_many(&mut batch, MAX_TRAILING).await > 0 {
                let items = batch.len();
                if let Err(err) = write(std::mem::take(&mut batch)).await {
                    tracing::warn!(error = %err, items, "cannot record {what}");
                }
            }
        });
        Trailing { queue }
    }

    /// Records `item`, soon.
    pub fn send(&self, item: T) {
        let _ = self.queue.send(item);
    }
}

/// Heartbeats' times: (node, its warm workers if it said). A node
/// heartbeating twice in one batch is written once, with its latest count.
pub fn heartbeats(db: DataStore) -> Trailing<(Uuid, Option<i32>)> {
    Trailing::start("nodes' heartbeats", move |beats| {
        let db = db.clone();
        async move {
            let latest: std::collections::HashMap<Uuid, Option<i32>> = beats.into_iter().collect();
            let (nodes, warm): (Vec<Uuid>, Vec<Option<i32>>) = latest.into_iter().unzip();
            db.node_heartbeats_record(&nodes, &warm).await
        }
    })
}
