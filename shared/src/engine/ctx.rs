#[derive(Clone)]
pub struct Ctx {}
pub struct StepCtx {}
