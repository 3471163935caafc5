;; Imports a function that is not part of WASI preview 1.
(module
  (import "wasi_snapshot_preview1" "no_such_function" (func $no_such_function))
  (memory (export "memory") 1)
  (func (export "_start")
    call $no_such_function))
