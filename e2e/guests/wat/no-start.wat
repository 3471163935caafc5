;; A valid module that exports memory but has no `_start` entry point.
(module
  (memory (export "memory") 1)
  (func (export "not_start") (result i32)
    i32.const 42))
