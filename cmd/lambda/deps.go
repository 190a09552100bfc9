package main

// Blank imports keep the chosen dependencies in go.mod while the layers that use them land.
// Remove an import once a layer imports the package itself.
import (
	_ "github.com/IBM/sarama"
	_ "github.com/gin-gonic/gin"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/robfig/cron/v3"
	_ "github.com/twmb/franz-go/pkg/kfake"
	_ "github.com/valyala/fastjson"
	_ "golang.org/x/sync/errgroup"
)
