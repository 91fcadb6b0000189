//! Changing code under live runs (`baton_testkit::upgrade`) on the in-memory store and on
//! SQLite; the DynamoDB store runs the same scenarios against moto in baton-aws's tests.

use std::sync::Arc;

use baton::Store;
use baton::store::memory::MemoryStore;
use baton_sqlite::SqliteStore;
use baton_testkit::upgrade;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_on_the_memory_store() {
    upgrade::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    upgrade::run_all(|| {
        let path = dir
            .path()
            .join(format!("{}.db", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        async move {
            Arc::new(SqliteStore::open(path, baton_sqlite::Durability::Normal).unwrap())
                as Arc<dyn Store>
        }
    })
    .await;
}
