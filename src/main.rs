//! The app's `baton` command line: Baton's CLI with this app's functions and its dev hook
//! (`baton dev`, `generate`, `send`, `runs`, `run --follow`, `cancel`, `replay`, `functions`).

mod dev;

fn main() -> std::process::ExitCode {
    baton_cli::App::new(app::registry).dev(dev::start).main()
}
