//! The in-memory store against the one conformance suite (the other backends run it in their
//! own crates' tests).

use baton::store::memory::MemoryStore;
use baton_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    conformance::run_all(|| async { MemoryStore::new() }).await;
}
