//! Minimal guest: prints a fixed greeting to stdout.

fn main() {
    println!("hello from wasmpod");
}
