//! The `meshctl` binary; everything is in the library (`meshctl::main`).

fn main() -> std::process::ExitCode {
    meshctl::main()
}
