;; Writes "hello from wat\n" to stdout with WASI preview 1 fd_write.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at offset 0: { buf = 16, len = 15 }; message at offset 16.
  (data (i32.const 0) "\10\00\00\00\0f\00\00\00")
  (data (i32.const 16) "hello from wat\n")
  (func (export "_start")
    ;; fd 1, iovs = 0, iovs_len = 1, nwritten written at offset 8
    (drop
      (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
