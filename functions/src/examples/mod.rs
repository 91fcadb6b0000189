//! Example workloads.

pub mod clips;
pub mod order;
pub mod transcription;
