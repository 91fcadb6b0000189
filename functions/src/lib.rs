//! The app's durable functions: the example workloads `baton dev` serves. The registry built
//! here is the single source of truth for handlers, queues and the generated files
//! ([`generate`]: the Lambda handler binaries in `src/bin/`, template.yaml, and the Vercel
//! functions in `vercel/` with vercel.json). [`aws`] holds what each Lambda handler binary
//! runs, [`vercel`] what each Vercel function runs, [`relay`] how steps hosted on Vercel get
//! their messages.

pub mod aws;
pub mod examples;
pub mod fakes;
pub mod generate;
pub mod relay;
pub mod services;
pub mod vercel;

use std::sync::Arc;

use baton::Registry;
use baton::webhook::WebhookSource;

use services::Services;

/// Where `baton dev` serves the fake outside services, and where the examples look for them
/// when `BATON_{SERVICE}_URL` is not set.
pub const FAKES_PORT: u16 = 8290;

/// Every function of the app, with the outside services from the environment
/// ([`Services::from_env`]; unset ones at the fakes `baton dev` runs on [`FAKES_PORT`]).
pub fn registry() -> Registry {
    registry_with(Services::from_env(&format!(
        "http://127.0.0.1:{FAKES_PORT}"
    )))
}

/// Every function of the app, failure handlers included, and the outside services that call
/// back, with the examples calling `services`.
pub fn registry_with(services: Services) -> Registry {
    let services = Arc::new(services);
    use examples::{clips, podcast, transcription, transcripts};
    Registry::new()
        .register(examples::order::function())
        .and_then(|r| r.register(examples::order::daily_report()))
        .and_then(|r| r.register(clips::function(services.clone())))
        .and_then(|r| r.register(transcription::transcribe_video(services.clone())))
        .and_then(|r| r.register(transcription::generate_embeddings(services.clone())))
        .and_then(|r| r.register(transcription::batch_reprocess(services.clone())))
        .and_then(|r| r.register(podcast::function(services.clone())))
        .and_then(|r| r.register(podcast::on_cancelled(services.clone())))
        .and_then(|r| r.register(transcripts::function(services.clone())))
        .expect("the example functions are valid")
        // The clip service's task callbacks (`clips/task.updated`), signed over
        // `{timestamp}.{body}`; secret in BATON_WEBHOOK_SECRET_CLIPS.
        .register_webhook(
            WebhookSource::new("clips", "task.updated")
                .signature_header("x-clips-signature")
                .timestamp_header("x-clips-timestamp")
                .id_header("x-clips-delivery"),
        )
        .expect("the webhook sources are valid")
}
