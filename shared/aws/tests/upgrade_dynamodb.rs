//! Changing code under live runs (`baton_testkit::upgrade`: patch markers, deploy-check,
//! removed functions, restart from a step) on the DynamoDB store against moto, with the real
//! aws-sdk client. Messages go through the in-process queue: what is particular to DynamoDB
//! here is the store (steps planned on their predecessor's item, the sharded status index the
//! check and the sweeper list).

use std::sync::Arc;

use baton::Store;
use baton_testkit::{moto, upgrade};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_on_dynamodb() {
    upgrade::run_all(|| async { Arc::new(moto::fresh_store().await) as Arc<dyn Store> }).await;
}
