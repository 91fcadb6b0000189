//! Group commit: every write of the store runs on one connection, on its own thread, and the
//! writes that arrive while a commit is syncing share the next transaction and its one fsync.
//!
//! - Each write runs in a savepoint of the shared transaction: an error it returns undoes
//!   its own changes only, and it gets that error.
//! - No write is answered before the transaction holding it has committed (under
//!   `synchronous=FULL`, fsynced). When the commit fails, or SQLite aborts the transaction,
//!   every write in it gets the error: none was acknowledged, so none is lost.
//! - A write sees every write queued before it (one connection, one order), so the batch
//!   behaves as if the writes had been committed one by one in arrival order.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use rusqlite::Connection;

use baton::error::StoreError;
use baton::store::StoreResult;

/// At most this many writes share a transaction (a bound on one commit's latency).
const MAX_BATCH: usize = 512;

/// A queued write: run it in the open transaction, then answer once the outcome is known.
trait Job: Send {
    /// Runs the write; true when it succeeded (its savepoint is kept).
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: the write's own result when the transaction committed, else the
    /// transaction's error.
    fn answer(self: Box<Self>, committed: Result<(), StoreError>);
}

type Panic = Box<dyn Any + Send>;
type Reply<T> = Result<StoreResult<T>, Panic>;

struct Write<T, F> {
    f: Option<F>,
    result: Option<Reply<T>>,
    reply: mpsc::SyncSender<Reply<T>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn apply(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)));
        let ok = matches!(result, Ok(Ok(_)));
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), StoreError>) {
        let reply = match (committed, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Ok(Err(StoreError::Backend("the write was not run".into()))),
            // A panic is reported as one even when the batch failed too.
            (Err(_), Some(Err(panic))) => Err(panic),
            (Err(e), _) => Ok(Err(e)),
        };
        // The caller may have gone (its task was dropped): nothing to tell.
        let _ = self.reply.send(reply);
    }
}

/// The handle writes are sent through. Cloning shares the one writer thread, which ends when
/// the last handle is dropped (after answering what was queued).
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    commits: Arc<AtomicU64>,
}

/// A submitted write's answer.
pub(crate) struct Answer<T> {
    reply: Result<mpsc::Receiver<Reply<T>>, StoreError>,
}

impl<T> Answer<T> {
    /// Blocks until the write's transaction has committed or failed. `Err` carries a panic
    /// of the write, to be resumed by the caller.
    pub(crate) fn wait(self) -> Reply<T> {
        match self.reply {
            Ok(reply) => reply.recv().unwrap_or_else(|_| {
                Ok(Err(StoreError::Backend(
                    "the store's writer stopped before answering".into(),
                )))
            }),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl Writer {
    pub(crate) fn start(conn: Connection) -> StoreResult<Writer> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("baton-sqlite-writer".into())
            .spawn(move || run(conn, queue, &counted))
            .map_err(|e| StoreError::Backend(format!("starting the store's writer: {e}")))?;
        Ok(Writer { jobs, commits })
    }

    /// Transactions committed so far.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues `f` for the next group commit.
    pub(crate) fn submit<T, F>(&self, f: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Box::new(Write {
            f: Some(f),
            result: None,
            reply,
        });
        let reply = match self.jobs.send(job) {
            Ok(()) => Ok(answer),
            Err(_) => Err(StoreError::Backend("the store's writer has stopped".into())),
        };
        Answer { reply }
    }
}

/// The writer thread: takes what has queued up (at least one write), commits it as one
/// transaction, answers, and again.
fn run(conn: Connection, queue: mpsc::Receiver<Box<dyn Job>>, commits: &AtomicU64) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit(&conn, batch, commits);
    }
}

/// Runs the batch in one transaction and answers every write; true when it committed (then
/// counted in `commits` before any answer, so a caller that has its answer sees the count).
fn commit(conn: &Connection, mut batch: Vec<Box<dyn Job>>, commits: &AtomicU64) -> bool {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        fail(batch, e);
        return false;
    }
    for job in &mut batch {
        if let Err(e) = conn.execute_batch("SAVEPOINT write") {
            abort(conn, batch, e);
            return false;
        }
        let ok = job.apply(conn);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (a full disk, an I/O error): the
            // writes before this one are gone too.
            fail(
                batch,
                "the transaction was rolled back by SQLite (see the failed write's error)",
            );
            return false;
        }
        let end = if ok {
            "RELEASE write"
        } else {
            "ROLLBACK TO write; RELEASE write"
        };
        if let Err(e) = conn.execute_batch(end) {
            abort(conn, batch, e);
            return false;
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            batch.into_iter().for_each(|job| job.answer(Ok(())));
            true
        }
        Err(e) => {
            abort(conn, batch, e);
            false
        }
    }
}

/// Rolls back what is open and fails every write of the batch.
fn abort(conn: &Connection, batch: Vec<Box<dyn Job>>, error: impl ToString) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(%e, "rolling back a failed group commit");
    }
    fail(batch, error)
}

fn fail(batch: Vec<Box<dyn Job>>, error: impl ToString) {
    let error = error.to_string();
    tracing::warn!(writes = batch.len(), %error, "group commit failed");
    for job in batch {
        job.answer(Err(StoreError::Backend(error.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Receiver = mpsc::Receiver<Reply<i64>>;

    /// A write of `f`, and where its answer arrives.
    fn job(
        f: impl FnOnce(&Connection) -> StoreResult<i64> + Send + 'static,
    ) -> (Box<dyn Job>, Receiver) {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Box::new(Write {
            f: Some(f),
            result: None,
            reply,
        });
        (job, answer)
    }

    fn insert(id: i64) -> impl FnOnce(&Connection) -> StoreResult<i64> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO t (id) VALUES (?1)", [id])
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            Ok(id)
        }
    }

    fn answer(rx: &Receiver) -> StoreResult<i64> {
        rx.recv()
            .expect("answered")
            .unwrap_or_else(|_| panic!("not a panic"))
    }

    fn ids(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn database() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE t (id INTEGER PRIMARY KEY);
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_failing_write_undoes_only_itself() {
        let conn = database();
        let (a, a_rx) = job(insert(1));
        // Writes a row, then fails: its row must not stay.
        let (b, b_rx) = job(|conn| {
            insert(2)(conn)?;
            Err(StoreError::Backend("refused".into()))
        });
        let (c, c_rx) = job(insert(3));
        assert!(commit(&conn, vec![a, b, c], &AtomicU64::new(0)));
        assert_eq!(answer(&a_rx).unwrap(), 1);
        assert!(answer(&b_rx).is_err());
        assert_eq!(answer(&c_rx).unwrap(), 3);
        assert_eq!(ids(&conn), vec![1, 3]);
    }

    #[test]
    fn a_failed_commit_fails_every_write_in_it() {
        let conn = database();
        let (a, a_rx) = job(insert(1));
        // Succeeds as a statement; the deferred foreign key then fails the COMMIT.
        let (b, b_rx) = job(|conn| {
            conn.execute("INSERT INTO child (parent) VALUES (99)", [])
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            Ok(0)
        });
        assert!(!commit(&conn, vec![a, b], &AtomicU64::new(0)));
        assert!(answer(&a_rx).is_err(), "no write is acknowledged");
        assert!(answer(&b_rx).is_err());
        assert!(conn.is_autocommit(), "the transaction is closed");
        assert_eq!(ids(&conn), Vec::<i64>::new(), "nothing was kept");

        // The next batch commits normally.
        let (c, c_rx) = job(insert(3));
        assert!(commit(&conn, vec![c], &AtomicU64::new(0)));
        assert_eq!(answer(&c_rx).unwrap(), 3);
        assert_eq!(ids(&conn), vec![3]);
    }

    #[test]
    fn a_panicking_write_is_reported_as_a_panic_and_others_commit() {
        let conn = database();
        let (a, a_rx) = job(|conn| {
            insert(1)(conn)?;
            panic!("boom")
        });
        let (b, b_rx) = job(insert(2));
        assert!(commit(&conn, vec![a, b], &AtomicU64::new(0)));
        assert!(a_rx.recv().unwrap().is_err(), "the panic comes back");
        assert_eq!(answer(&b_rx).unwrap(), 2);
        assert_eq!(ids(&conn), vec![2]);
    }

    #[test]
    fn writes_queued_during_a_commit_share_the_next_one() {
        let writer = Writer::start(database()).unwrap();
        // The first write holds the writer until the other 200 are queued.
        let (release, hold) = mpsc::channel::<()>();
        let first = writer.submit(move |_| {
            hold.recv().unwrap();
            Ok(-1)
        });
        let answers: Vec<_> = (0..200).map(|id| writer.submit(insert(id))).collect();
        release.send(()).unwrap();
        assert_eq!(first.wait().ok().unwrap().unwrap(), -1);
        for (id, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.wait().ok().unwrap().unwrap(), id as i64);
        }
        // The 200 share one commit (with the first, when they were queued before the
        // writer took its batch).
        let commits = writer.commits();
        assert!(
            (1..=2).contains(&commits),
            "{commits} commits for 201 writes"
        );
    }
}
