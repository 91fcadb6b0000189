//! Example workloads.

pub mod order;
