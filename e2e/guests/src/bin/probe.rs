//! Multi-tool guest used by the wasmpod end-to-end tests.
//!
//! The first argument selects an action; see [`usage`] for the list. Every
//! action prints exactly what the tests expect and exits 0 unless stated.

use std::fs;
use std::hint::black_box;
use std::io::{self, BufWriter, Read, Write};
use std::process::exit;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: probe ACTION [ARGS...]
actions:
  args [ANY...]        print each argument (including argv[0]) on its own line
  env                  print each environment variable as K=V, sorted
  exit N               exit with code N
  cwd                  print the current directory
  cat PATH             copy the file at PATH to stdout
  write PATH TEXT      write TEXT to PATH, print `wrote PATH`
  ls PATH              print the sorted entry names of directory PATH
  resolve NAME         look NAME up (wasi:sockets ip-name-lookup), print `NAME IP...` sorted
  echo                 copy stdin to stdout until EOF
  spin                 print `spinning`, then loop forever
  trap                 print `about to trap`, then execute `unreachable`
  sleep SECS           sleep SECS seconds, then print `slept`
  stderr TEXT          print TEXT to stderr
  alloc MIB [SECS]     allocate and touch MIB mebibytes, then hold them SECS seconds
  serve PORT N         listen on 0.0.0.0:PORT (wasi:sockets), answer N connections with `hello from wasm`
  burn SECS            busy-loop for SECS seconds, then print `burned`
  stdout-flood MIB     write MIB mebibytes of `x` lines to stdout
  tick MS N [CODE]     every MS ms print `tick I` padded to 1 KiB (I from 1; N = 0: forever), then exit CODE
  recurse              recurse without bound (a stack overflow)
  truncate PATH        truncate PATH to zero length
  link FROM TO         hard-link FROM as TO
  rename FROM TO       rename FROM to TO
  rm PATH              remove the file PATH
  mkdir PATH           create the directory PATH";

const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;

/// Looks `name` up as the guest's runtime does (`wasi:sockets`
/// ip-name-lookup on wasip2) and prints each address, sorted.
fn resolve(name: &str) {
    use std::net::ToSocketAddrs;
    match (name, 80).to_socket_addrs() {
        Ok(addrs) => {
            let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.sort();
            ips.dedup();
            println!("{name} {}", ips.join(" "));
        }
        Err(err) => fail(format_args!("resolve {name}: {err}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let action = args.get(1).map(String::as_str).unwrap_or("");
    let rest = args.get(2..).unwrap_or(&[]);
    match (action, rest) {
        ("args", _) => {
            for arg in &args {
                println!("{arg}");
            }
        }
        ("env", []) => env(),
        ("exit", [code]) => exit(parse(code)),
        ("cwd", []) => match std::env::current_dir() {
            Ok(dir) => println!("{}", dir.display()),
            Err(err) => fail(format_args!("cwd: {err}")),
        },
        ("cat", [path]) => cat(path),
        ("write", [path, text]) => match fs::write(path, text) {
            Ok(()) => println!("wrote {path}"),
            Err(err) => fail(format_args!("write {path}: {err}")),
        },
        ("ls", [path]) => ls(path),
        ("resolve", [name]) => resolve(name),
        ("echo", []) => echo(),
        ("spin", []) => spin(),
        ("trap", []) => {
            println!("about to trap");
            flush_stdout();
            deliberate_trap();
        }
        ("sleep", [secs]) => {
            std::thread::sleep(Duration::from_secs_f64(parse(secs)));
            println!("slept");
        }
        ("stderr", [text]) => eprintln!("{text}"),
        ("alloc", [mib]) => alloc(parse(mib), 0.0),
        ("alloc", [mib, secs]) => alloc(parse(mib), parse(secs)),
        ("serve", [port, count]) => serve(parse(port), parse(count)),
        ("burn", [secs]) => burn(Duration::from_secs_f64(parse(secs))),
        ("stdout-flood", [mib]) => stdout_flood(parse(mib)),
        ("tick", [ms, n]) => tick(parse(ms), parse(n), 0),
        ("tick", [ms, n, code]) => tick(parse(ms), parse(n), parse(code)),
        ("recurse", []) => {
            println!("recursing");
            flush_stdout();
            println!("depth {}", recurse(black_box(1)));
        }
        ("truncate", [path]) => fs_op("truncate", path, || {
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map(drop)
        }),
        ("link", [from, to]) => fs_op("link", to, || fs::hard_link(from, to)),
        ("rename", [from, to]) => fs_op("rename", to, || fs::rename(from, to)),
        ("rm", [path]) => fs_op("rm", path, || fs::remove_file(path)),
        ("mkdir", [path]) => fs_op("mkdir", path, || fs::create_dir(path)),
        _ => usage(),
    }
}

/// Prints the usage text to stderr and exits with code 2.
fn usage() -> ! {
    eprintln!("{USAGE}");
    exit(2)
}

/// Parses a numeric argument, or exits with the usage text.
fn parse<T: std::str::FromStr>(text: &str) -> T {
    match text.parse() {
        Ok(value) => value,
        Err(_) => {
            eprintln!("probe: invalid number: {text}");
            usage()
        }
    }
}

/// Prints `probe: MESSAGE` to stderr and exits with code 1.
fn fail(message: std::fmt::Arguments<'_>) -> ! {
    eprintln!("probe: {message}");
    exit(1)
}

fn flush_stdout() {
    if let Err(err) = io::stdout().flush() {
        fail(format_args!("flush stdout: {err}"));
    }
}

fn env() {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.sort();
    for (key, value) in vars {
        println!("{key}={value}");
    }
}

fn cat(path: &str) {
    match fs::read(path) {
        Ok(data) => {
            let mut stdout = io::stdout().lock();
            if let Err(err) = stdout.write_all(&data).and_then(|()| stdout.flush()) {
                fail(format_args!("cat {path}: {err}"));
            }
        }
        Err(err) => fail(format_args!("cat {path}: {err}")),
    }
}

fn ls(path: &str) {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(err) => fail(format_args!("ls {path}: {err}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
            Err(err) => fail(format_args!("ls {path}: {err}")),
        }
    }
    names.sort();
    for name in names {
        println!("{name}");
    }
}

/// Copies stdin to stdout chunk by chunk (flushing each chunk) until EOF.
fn echo() {
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => fail(format_args!("echo: read stdin: {err}")),
        };
        if let Err(err) = stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()) {
            fail(format_args!("echo: write stdout: {err}"));
        }
    }
    eprintln!("probe: eof");
}

fn spin() -> ! {
    println!("spinning");
    flush_stdout();
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Executes the Wasm `unreachable` instruction, so the trap's backtrace names
/// this function.
#[inline(never)]
fn deliberate_trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::unreachable()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::process::abort()
    }
}

fn alloc(mib: usize, hold_secs: f64) {
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(mib);
    for _ in 0..mib {
        let mut chunk = vec![0u8; MIB];
        for offset in (0..MIB).step_by(PAGE) {
            chunk[offset] = 1;
        }
        chunks.push(black_box(chunk));
    }
    black_box(&chunks);
    println!("allocated {mib} MiB");
    if hold_secs > 0.0 {
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs_f64(hold_secs));
    }
}

fn serve(port: u16, count: usize) {
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("probe: listen on port {port}: {e}");
            exit(1)
        }
    };
    println!("listening on {port}");
    let _ = io::stdout().flush();
    for _ in 0..count {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.write_all(b"hello from wasm\n");
            }
            Err(e) => {
                eprintln!("probe: accept: {e}");
                exit(1)
            }
        }
    }
}

fn burn(duration: Duration) {
    let start = Instant::now();
    let mut counter: u64 = 0;
    while start.elapsed() < duration {
        for _ in 0..10_000 {
            counter = black_box(counter.wrapping_add(1));
        }
    }
    black_box(counter);
    println!("burned");
}

/// Writes `mib` mebibytes of 64-byte lines (`x` * 63 + newline) to stdout.
fn stdout_flood(mib: usize) {
    let mut line = [b'x'; 64];
    line[63] = b'\n';
    let mut out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let lines = mib * MIB / line.len();
    for _ in 0..lines {
        if let Err(err) = out.write_all(&line) {
            fail(format_args!("stdout-flood: write stdout: {err}"));
        }
    }
    if let Err(err) = out.flush() {
        fail(format_args!("stdout-flood: write stdout: {err}"));
    }
    drop(out);
    eprintln!("flood done");
}

/// Prints `tick I` lines padded to 1 KiB every `ms` milliseconds, `n` of
/// them (0: forever), then exits with `code`. Each line is flushed, so a
/// reader that stops reading blocks the guest once the pipe is full.
fn tick(ms: u64, n: u64, code: i32) {
    let mut i: u64 = 1;
    while n == 0 || i <= n {
        let mut line = format!("tick {i} ");
        line.extend(std::iter::repeat_n('.', 1023 - line.len()));
        println!("{line}");
        flush_stdout();
        std::thread::sleep(Duration::from_millis(ms));
        i += 1;
    }
    exit(code)
}

/// Recurses until the stack runs out; the frame holds a buffer so each
/// level costs real stack.
#[inline(never)]
#[allow(unconditional_recursion, reason = "the point: recurse until the stack runs out")]
fn recurse(depth: u64) -> u64 {
    let buf = black_box([depth as u8; 256]);
    recurse(black_box(depth + 1)) + u64::from(buf[0])
}

/// Runs one file-system operation on `path`; prints `OP PATH: ok`, or the
/// error and exits 1.
fn fs_op(op: &str, path: &str, f: impl FnOnce() -> io::Result<()>) {
    match f() {
        Ok(()) => println!("{op} {path}: ok"),
        Err(err) => fail(format_args!("{op} {path}: {err}")),
    }
}
