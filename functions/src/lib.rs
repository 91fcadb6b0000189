//! The app's durable functions: the example workloads `baton dev` serves. The registry built
//! here is the single source of truth for handlers, queues and the generated files
//! ([`generate`]: the handler binaries in `src/bin/` and template.yaml; vercel.json later).
//! [`aws`] holds what each Lambda handler binary runs.

pub mod aws;
pub mod examples;
pub mod generate;

use baton::Registry;

/// Every function of the app, failure handlers included.
pub fn registry() -> Registry {
    Registry::new()
        .register(examples::order::function())
        .expect("the example functions are valid")
}
