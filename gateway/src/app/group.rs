//! Group commit for creates.
//!
//! A create that finds no other create waiting is written at once, alone, by
//! the statement that also places it on a free slot (one commit, no added
//! wait). Creates that arrive while others are being written queue up, and
//! the next free writer takes all of them (up to [`MAX_GROUP`]) as one
//! multi-row statement and one commit; they are placed by the placement task,
//! which also commits many placements at once. Each create is still answered
//! only after the commit that holds it. Nothing waits on a timer: a group is
//! whatever queued while the writers were busy.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::db::{DataStore, DispatchRow, NewDispatch, NodeEndpoint};
use crate::Result;

/// Most creates written by one statement.
const MAX_GROUP: usize = 64;
/// Writers working at once (each holds one database connection while writing).
const WRITERS: usize = 4;

/// A create's outcome: its row and, if placed in the same commit, its node;
/// `None` when the project already has a dispatch with its idempotency key.
pub type Inserted = Option<(DispatchRow, Option<NodeEndpoint>)>;

type Item = (NewDispatch, oneshot::Sender<Result<Inserted>>);

/// The queue of creates waiting for a writer.
#[derive(Clone)]
pub struct CreateGroups {
    queue: mpsc::UnboundedSender<Item>,
}

impl CreateGroups {
    /// Starts the writers, on `db`.
    pub fn start(db: DataStore) -> CreateGroups {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..WRITERS {
            tokio::spawn(write(db.clone(), waiting.clone()));
        }
        CreateGroups { queue }
    }

    /// Records `new`, alone or with whatever other creates are waiting.
    pub async fn insert(&self, new: NewDispatch) -> Result<Inserted> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((new, reply))
            .map_err(|_| crate::Error::Internal(anyhow::anyhow!("the create writers have stopped")))?;
        answer.await.map_err(|_| crate::Error::Internal(anyhow::anyhow!("a create writer stopped mid-write")))?
    }
}

/// One writer: takes the first waiting create and every other one queued
/// behind it, and writes them.
async fn write(db: DataStore, waiting: Arc<Mutex<mpsc::UnboundedReceiver<Item>>>) {
    loop {
        let mut group = Vec::new();
        {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else { return };
            group.push(first);
            while group.len() < MAX_GROUP {
                match waiting.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) => break,
                }
            }
        }
        if group.len() == 1 {
            let (new, reply) = group.pop().expect("one item");
            let _ = reply.send(db.dispatch_insert_and_place(&new).await);
            continue;
        }
        let news: Vec<&NewDispatch> = group.iter().map(|(new, _)| new).collect();
        let results = db.dispatch_insert_group(&news).await;
        for ((_, reply), result) in group.into_iter().zip(results) {
            let _ = reply.send(result.map(|row| row.map(|row| (row, None))));
        }
    }
}
