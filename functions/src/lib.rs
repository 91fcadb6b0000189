//! The app's durable functions: the example workloads `baton dev` serves. The registry built
//! here is the single source of truth for handlers, queues and (later) the generated
//! template.yaml and vercel.json.

pub mod examples;

use baton::Registry;

/// Every function of the app, failure handlers included.
pub fn registry() -> Registry {
    Registry::new()
        .register(examples::order::function())
        .expect("the example functions are valid")
}
