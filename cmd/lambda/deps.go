package main

// A blank import keeps a chosen dependency in go.mod until a layer imports it itself: the speed
// layer's event decoder uses fastjson.
import _ "github.com/valyala/fastjson"
