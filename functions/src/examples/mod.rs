//! Example workloads.

pub mod clips;
mod llm;
pub mod order;
pub mod podcast;
pub mod transcription;
pub mod transcripts;
